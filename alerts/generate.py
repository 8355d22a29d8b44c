"""Generate Prometheus recording and alerting rules from the signal catalog and, optionally, a deploy.yaml.

    rules = build_rules(Settings())                                   # generic: default SLOs
    rules = build_rules(settings_from_deployment(loaded.deployment))  # one deployment's SLOs
    text = render(rules, source="forge alerts build")

Every expression reads canonical catalog signals only (``forge_*`` and the DCGM field names); derived signals
come from the catalog's PromQL templates (``DerivedSignal.expr``). ``alerts/README.md`` explains the choices:
recording-rule names, the burn-rate windows and how they adapt to ``slo.window_days``, the latency SLI from
histogram buckets, and each threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml
from prometheus_client.utils import floatToGoString

from forge.catalog import DEFAULT_BY, Catalog, DerivedSignal, get_catalog
from forge.errors import InputError
from forge.exporters.cost import RECORDING_RULES as COST_RECORDING_RULES

# Default base of runbook_url; every alert's URL is <base><AlertName>.md (override: --runbook-base-url).
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/forge-inference/forge/blob/main/runbooks/"

SEVERITIES = ("page", "ticket", "info")

# Aggregation levels (the `level` of `level:metric:operations`): `replica` keeps every base label of a canonical
# engine series, `model` sums the replicas of one model (the level an SLO is promised at).
REPLICA_BY = DEFAULT_BY            # "engine, model, replica"
MODEL_BY = "engine, model"
LEVEL_OF = {REPLICA_BY: "replica", MODEL_BY: "model"}

DERIVED_WINDOW = "5m"
LATENCY_QUANTILES = (0.5, 0.95, 0.99)

# Histogram bucket upper bounds as vLLM 0.32 exposes them (vllm/v1/metrics/loggers.py; measured on the page in
# tests/fixtures/metrics/vllm-0.32.txt). The latency SLI needs a bucket bound at or just above the threshold;
# for another engine's layout pass its page (`--metrics-page`), and ForgeSLOHistogramBucketMissing fires if
# the chosen bound is absent from the live series.
VLLM_BUCKET_BOUNDS: dict[str, tuple[float, ...]] = {
    "forge_ttft_seconds": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                           7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
    "forge_itl_seconds": (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                          10.0, 20.0, 40.0, 80.0),
}


# ----------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class SloTargets:
    """What deploy.yaml's `slo:` promises. None = no such SLO (no burn alert for it)."""

    ttft_p95_seconds: float | None = None
    itl_p95_seconds: float | None = None
    availability: float | None = None
    window_days: int = 30


# The generic file's SLOs: an interactive chat service. Users put their own in deploy.yaml.
DEFAULT_SLO = SloTargets(ttft_p95_seconds=1.0, itl_p95_seconds=0.1, availability=0.999, window_days=30)


@dataclass(frozen=True)
class Settings:
    slo: SloTargets = DEFAULT_SLO
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    bucket_bounds: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(VLLM_BUCKET_BOUNDS))
    # Baselines the deployment expects; None = compare with the signal's own last day.
    expected_prefix_cache_hit_ratio: float | None = None
    expected_spec_acceptance_rate: float | None = None
    # deploy.yaml's slo.cost_budget_usd_per_1m_output_tokens; None = compare with the exporter's budget series.
    cost_budget_usd_per_1m_output_tokens: float | None = None
    group_prefix: str = "forge"


def settings_from_deployment(deployment: Any, **overrides: Any) -> Settings:
    """Settings for one deploy.yaml (a validated forge.schema.Deployment)."""
    slo = deployment.slo
    targets = SloTargets(slo.ttft_p95_seconds, slo.itl_p95_seconds, slo.availability, slo.window_days) \
        if slo else SloTargets()
    spec = deployment.engine.args.speculative_config
    return Settings(
        slo=targets,
        expected_prefix_cache_hit_ratio=deployment.traffic.prefix_cache_hit_rate if deployment.traffic else None,
        expected_spec_acceptance_rate=spec.expected_acceptance_rate if spec else None,
        cost_budget_usd_per_1m_output_tokens=slo.cost_budget_usd_per_1m_output_tokens if slo else None,
        # Group names tell files apart in Prometheus' rule view: `forge-reference-slo-alerts`, `forge-chat-...`.
        group_prefix=(deployment.metadata.name if deployment.metadata.name.startswith("forge")
                      else f"forge-{deployment.metadata.name}"),
        **overrides,
    )


# ----------------------------------------------------------------------------------------------- rule types

@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str

    def to_dict(self) -> dict[str, Any]:
        return {"record": self.record, "expr": self.expr}


@dataclass(frozen=True)
class AlertRule:
    alert: str
    expr: str
    severity: str
    summary: str
    description: str
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self, runbook_base_url: str) -> dict[str, Any]:
        out: dict[str, Any] = {"alert": self.alert, "expr": self.expr}
        if self.for_:
            out["for"] = self.for_
        out["labels"] = {"severity": self.severity, **self.labels}
        out["annotations"] = {"summary": self.summary, "description": self.description,
                              "runbook_url": f"{runbook_base_url}{self.alert}.md"}
        return out


@dataclass(frozen=True)
class RuleGroup:
    name: str
    rules: list[RecordingRule | AlertRule]
    interval: str | None = None


@dataclass(frozen=True)
class RuleSet:
    groups: list[RuleGroup]
    settings: Settings
    notes: list[str]  # what the user should know (inexact bucket, missing SLOs), one line each

    def alerts(self) -> list[AlertRule]:
        return [r for g in self.groups for r in g.rules if isinstance(r, AlertRule)]

    def records(self) -> list[RecordingRule]:
        return [r for g in self.groups for r in g.rules if isinstance(r, RecordingRule)]


# ----------------------------------------------------------------------------------------------- helpers

def _seconds(duration: str) -> int:
    units = {"m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


def _num(value: float) -> str:
    """A threshold as PromQL writes it: 14.4, 0.001, 6 — no float noise (1 - 0.999 = 0.0010000000000000009)."""
    return f"{round(value, 10):g}"


def _metric_part(derived_name: str) -> str:
    """`forge:error_ratio` -> `forge_error_ratio`: the catalog's derived names already use `:`, which
    `level:metric:operations` reserves for separating its three parts."""
    return derived_name.replace(":", "_")


def _operation(derived: DerivedSignal, window: str) -> str:
    # Ratios of rates are `ratio_rate`, means of rates `mean`, plain rates `rate` (Prometheus naming practice).
    kind = {"ratio": "ratio_rate", "seconds": "mean", "tokens": "mean"}.get(derived.unit, "rate")
    return f"{kind}{window}"


def derived_record_name(derived: DerivedSignal, by: str = REPLICA_BY, window: str = DERIVED_WINDOW) -> str:
    return f"{LEVEL_OF[by]}:{_metric_part(derived.name)}:{_operation(derived, window)}"


def quantile_record_name(signal: str, quantile: float, window: str = DERIVED_WINDOW, by: str = MODEL_BY) -> str:
    return f"{LEVEL_OF[by]}:{signal}:p{round(quantile * 100):d}_{window}"


def slo_bucket(signal: str, threshold: float, bounds: Iterable[float]) -> tuple[float, bool]:
    """The bucket bound the SLI counts as "fast enough": the threshold itself when a bucket has that bound,
    else the next bound above it (the SLI then reads "under <bound>", a little lenient, said in a note).
    Returns (bound, exact)."""
    finite = sorted(b for b in bounds if math.isfinite(b))
    for bound in finite:
        if math.isclose(bound, threshold, rel_tol=1e-9):
            return bound, True
        if bound > threshold:
            return bound, False
    top = f"{finite[-1]:g} s" if finite else "none"
    raise InputError(f"slo threshold {threshold:g} s for {signal}: above the histogram's largest finite bucket "
                     f"({top}) — the SLI can't be computed; lower the SLO or pass a --metrics-page whose buckets "
                     f"reach it")


# ----------------------------------------------------------------------------------------------- burn rates

@dataclass(frozen=True)
class BurnWindow:
    """One multi-window pair: alert when the error budget burns `factor` times too fast over both windows."""

    severity: str
    long: str
    short: str
    budget_share: float    # share of the whole budget this pair catches being spent within `long`


# Google SRE workbook, ch. 5 "Alerting on SLOs" (table 5-8), for a 30-day window: page on 2% of the budget in
# 1 h (14.4x) or 5% in 6 h (6x); ticket on 10% in 1 d (3x) or 10% in 3 d (1x). Short windows are 1/12 of the long.
SRE_WORKBOOK_WINDOWS = (
    BurnWindow("page", "1h", "5m", 0.02),
    BurnWindow("page", "6h", "30m", 0.05),
    BurnWindow("ticket", "1d", "2h", 0.10),
    BurnWindow("ticket", "3d", "6h", 0.10),
)


def burn_factor(window: BurnWindow, window_days: int) -> float:
    """The burn rate at which `budget_share` of a `window_days` budget is gone within the long window.

    The workbook's numbers are this formula at 30 days (0.02 x 720 h / 1 h = 14.4). Keeping the windows (they set
    how fast on-call hears of it) and the budget shares, other SLO windows scale the factor; never below 1,
    since a burn rate under 1 would not exhaust the budget at all."""
    hours = window_days * 24
    return max(1.0, round(window.budget_share * hours / (_seconds(window.long) / 3600), 4))


def burn_windows(window_days: int) -> list[tuple[BurnWindow, float]]:
    """The pairs that fit in the SLO window, each with its factor (a 3-day window can't judge a 1-day SLO)."""
    return [(w, burn_factor(w, window_days)) for w in SRE_WORKBOOK_WINDOWS
            if _seconds(w.long) <= window_days * 86400]


# ----------------------------------------------------------------------------------------------- SLOs

@dataclass(frozen=True)
class Sli:
    key: str             # ttft | itl | availability
    title: str           # for alert names and text
    objective: float     # share of good events promised, e.g. 0.95 for a p95 latency target
    record_base: str     # `model:<metric>` — the window goes into the operation
    expr_for_window: Any  # window -> PromQL of the bad-event ratio
    promise: str         # the SLO in words, for annotations
    alert_stem: str      # ForgeTTFTSLOFastBurn, ForgeAvailabilitySLOSlowBurn
    events: str = "requests"  # what the ratio counts: ITL's histogram has one observation per token gap

    def record(self, window: str) -> str:
        return f"{self.record_base}:ratio_rate{window}"


def _latency_sli(key: str, title: str, signal: str, threshold: float, quantile: float,
                 settings: Settings, notes: list[str]) -> tuple[Sli, str]:
    bound, exact = slo_bucket(signal, threshold, settings.bucket_bounds.get(signal, ()))
    le = floatToGoString(bound)  # exactly how the exporter writes `le` (forge/exporters/normalize.py)
    if not exact:
        notes.append(f"{key}: no {signal} bucket at {threshold:g} s; the SLI counts requests under the next bucket, "
                     f"{le} s (slightly lenient)")

    def expr(window: str) -> str:
        return (f"1 - (\n  sum by ({MODEL_BY}) (rate({signal}_bucket{{le=\"{le}\"}}[{window}]))\n"
                f"  / sum by ({MODEL_BY}) (rate({signal}_count[{window}]))\n)")

    promise = f"{quantile:.0%} of {'token gaps' if key == 'itl' else 'requests'} with {title} under {threshold:g} s"
    events = "token gaps" if key == "itl" else "requests"
    sli = Sli(key, title, quantile, f"model:forge_{key}_slo_miss", expr, promise, alert_stem=title, events=events)
    return sli, le


def _slis(settings: Settings, notes: list[str], catalog: Catalog) -> tuple[list[Sli], dict[str, tuple[str, str]]]:
    slo = settings.slo
    slis: list[Sli] = []
    buckets: dict[str, tuple[str, str]] = {}   # sli key -> (signal, le) for the bucket-missing guard
    if slo.ttft_p95_seconds is not None:
        sli, le = _latency_sli("ttft", "TTFT", "forge_ttft_seconds", slo.ttft_p95_seconds, 0.95, settings, notes)
        slis.append(sli)
        buckets["ttft"] = ("forge_ttft_seconds", le)
    if slo.itl_p95_seconds is not None:
        sli, le = _latency_sli("itl", "ITL", "forge_itl_seconds", slo.itl_p95_seconds, 0.95, settings, notes)
        slis.append(sli)
        buckets["itl"] = ("forge_itl_seconds", le)
    if slo.availability is not None:
        error_ratio = catalog.derived["forge:error_ratio"]
        slis.append(Sli("availability", "Availability", slo.availability, "model:forge_error_ratio",
                        lambda window: error_ratio.expr(window, MODEL_BY),
                        f"{_num(slo.availability * 100)}% of requests without a server error",
                        alert_stem="Availability"))
    return slis, buckets


def _slo_groups(settings: Settings, notes: list[str], catalog: Catalog) -> list[RuleGroup]:
    slis, buckets = _slis(settings, notes, catalog)
    if not slis:
        notes.append("no slo.ttft_p95_seconds / itl_p95_seconds / availability: no SLO burn alerts generated")
        return []
    pairs = burn_windows(settings.slo.window_days)
    windows = sorted({w for pair, _ in pairs for w in (pair.long, pair.short)}, key=_seconds)
    records = [RecordingRule(sli.record(w), sli.expr_for_window(w)) for sli in slis for w in windows]
    alerts: list[AlertRule] = []
    days = settings.slo.window_days
    for sli in slis:
        budget = 1 - sli.objective
        for severity, speed in (("page", "Fast"), ("ticket", "Slow")):
            chosen = [(p, f) for p, f in pairs if p.severity == severity]
            if not chosen:
                continue
            # `and` keeps the left sample, so $value is the long window's bad-event ratio.
            expr = "\nor\n".join(
                f"(\n  {sli.record(p.long)} > ({_num(f)} * {_num(budget)})\n"
                f"  and\n  {sli.record(p.short)} > ({_num(f)} * {_num(budget)})\n)" for p, f in chosen)
            spec = ", ".join(f"{p.long}/{p.short} at {_num(f)}x" for p, f in chosen)
            alerts.append(AlertRule(
                alert=f"Forge{sli.alert_stem}SLO{speed}Burn",
                expr=expr, severity=severity,
                labels={"slo": sli.key},
                summary=f"{sli.title} SLO of {{{{ $labels.model }}}} ({{{{ $labels.engine }}}}): error budget "
                        f"burning {'fast' if speed == 'Fast' else 'steadily'}",
                description=(f"{{{{ $value | humanizePercentage }}}} of {sli.events} missed the SLO ({sli.promise}, "
                             f"budget {_num(budget * 100)}% over {days} d) over the long window. Burn pairs: {spec}. "
                             + ("At this rate the budget is gone long before the window ends: act now."
                                if severity == "page" else "At this rate the budget runs out before the window ends.")),
            ))
    if buckets:
        # The latency SLI reads one bucket bound; an engine whose layout lacks it would make the SLI silently
        # empty (no alert ever). Say so instead.
        missing = "\nor\n".join(
            f"(\n  sum by ({MODEL_BY}) (rate({signal}_count[1h])) > 0\n"
            f"  unless on ({MODEL_BY})\n  sum by ({MODEL_BY}) (rate({signal}_bucket{{le=\"{le}\"}}[1h]))\n)"
            for signal, le in buckets.values())
        alerts.append(AlertRule(
            alert="ForgeSLOHistogramBucketMissing", expr=missing, severity="ticket", for_="15m",
            summary="Latency SLO of {{ $labels.model }} ({{ $labels.engine }}) can't be measured: no histogram "
                    "bucket at the SLO threshold",
            description="The engine reports latency histograms but none with the bucket bound the SLO rules read ("
                        + ", ".join(f"{signal} le=\"{le}\"" for signal, le in buckets.values())
                        + "), so the SLO burn alerts for it can never fire. Regenerate the rules with "
                          "`forge alerts build --metrics-page` from this engine's /metrics.",
        ))
    return [RuleGroup(f"{settings.group_prefix}-slo-sli", records),
            RuleGroup(f"{settings.group_prefix}-slo-alerts", alerts)]


# ----------------------------------------------------------------------------------------------- recordings

def _derived_group(settings: Settings, catalog: Catalog) -> RuleGroup:
    rules = [RecordingRule(derived_record_name(d), d.expr(DERIVED_WINDOW, REPLICA_BY)) for d in catalog.derived.values()]
    for signal in catalog.signals_in_scope("engine"):
        if signal.type != "histogram":
            continue
        for q in LATENCY_QUANTILES:
            rules.append(RecordingRule(
                quantile_record_name(signal.name, q),
                f"histogram_quantile({q:g}, sum by ({MODEL_BY}, le) (rate({signal.name}_bucket[{DERIVED_WINDOW}])))"))
    return RuleGroup(f"{settings.group_prefix}-recording", rules)


# ----------------------------------------------------------------------------------------------- engine alerts

# Thresholds, each with why. Durations are Prometheus durations.
ENGINE_DOWN_FOR = "1m"          # two missed exporter cycles at most; HAProxy has already drained the replica
HUNG_WINDOW = "2m"              # tokens frozen this long while requests run: no healthy decode step takes that
HUNG_FOR = "1m"                 # fires ~3 min into a hang, before vLLM's own 300 s execute-model timeout
KV_NEAR_FULL_RATIO = 0.9        # above this the scheduler has little room for a burst before it preempts
KV_NEAR_FULL_FOR = "10m"        # sustained, not one long prompt
PREEMPTIONS_PER_REQUEST = 0.1   # one preemption per ten finished requests is recompute that shows up as latency
PREEMPTION_FOR = "10m"
QUEUE_WINDOW = "10m"            # the queue never emptied in this window: demand above capacity, not a burst
QUEUE_FOR = "5m"
COLLAPSE_FACTOR = 0.5           # "collapse"/"drop": below half of the expected (or last day's) level
COLLAPSE_WINDOW = "15m"
BASELINE_WINDOW = "1d"
GPU_TEMP_CELSIUS = 85           # a few degrees below the slowdown temperature of current data-center GPUs
                                # (per product: `nvidia-smi -q -d TEMPERATURE`, "GPU Slowdown Temp")
THROTTLED_SHARE = 0.05          # clocks held down more than 5% of the time
POWER_THROTTLED_SHARE = 0.2     # power capping under full load is normal; a large share is information
GPU_MEMORY_FULL_RATIO = 0.98    # engines pre-allocate ~90% (vLLM gpu_memory_utilization); past 98% the next
                                # allocation (CUDA graphs, a long prompt's activations) fails with OOM
EXPORTER_LOOKBACK = "1d"        # an exporter that reported within a day and stopped is a lost target
# NVIDIA "Xid Errors" catalogue (docs.nvidia.com/deploy/xid-errors): codes that mean the GPU's memory or link is
# failing or the GPU is gone — drain and reset/replace. 48 DBE ECC, 63/64 row remap pending/failure,
# 74 NVLink, 79 fallen off the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained ECC error.
CRITICAL_XIDS = (48, 63, 64, 74, 79, 92, 94, 95)

_TARGET = "{{ $labels.replica }} ({{ $labels.engine }}, model {{ $labels.model }})"
_GPU = "GPU {{ $labels.gpu }} ({{ $labels.modelName }}) on {{ $labels.Hostname }}"


def _baseline(record: str, expected: float | None) -> str:
    return _num(expected) if expected is not None else f"avg_over_time({record}[{BASELINE_WINDOW}])"


def _engine_alerts(settings: Settings, catalog: Catalog) -> list[AlertRule]:
    prefix_record = derived_record_name(catalog.derived["forge:prefix_cache_hit_ratio"])
    spec_record = derived_record_name(catalog.derived["forge:spec_acceptance_rate"])

    def collapse(record: str, expected: float | None) -> str:
        return (f"avg_over_time({record}[{COLLAPSE_WINDOW}])\n"
                f"  < {_num(COLLAPSE_FACTOR)} * {_baseline(record, expected)}")

    def baseline_words(expected: float | None) -> str:
        return (f"half of the {_num(expected)} deploy.yaml expects" if expected is not None
                else f"half of its average over the last {BASELINE_WINDOW}")

    return [
        AlertRule(
            alert="ForgeEngineDown", severity="page", for_=ENGINE_DOWN_FOR,
            expr="forge_engine_up == 0",
            summary=f"Engine {_TARGET} is down",
            description=f"The Forge exporter has not been able to scrape the engine's /metrics for {ENGINE_DOWN_FOR}: "
                        "the process crashed, is restarting, or its port is unreachable. Its share of traffic fails "
                        "or is on the other replicas.",
        ),
        AlertRule(
            alert="ForgeEngineHung", severity="page", for_=HUNG_FOR,
            expr=(f"sum by ({REPLICA_BY}) (increase(forge_generation_tokens_total[{HUNG_WINDOW}])) == 0\n"
                  f"and on ({REPLICA_BY})\n"
                  f"min by ({REPLICA_BY}) (min_over_time(forge_requests_running[{HUNG_WINDOW}])) > 0"),
            summary=f"Engine {_TARGET} is hung: requests running, no tokens generated",
            description=f"{{{{ $value }}}} tokens generated in {HUNG_WINDOW} while requests stayed in the running "
                        "batch (held at least one all along). A stuck collective or worker: /health still answers "
                        "200, so liveness probes will not restart it. Streams in flight are stalled.",
        ),
        AlertRule(
            alert="ForgeExporterTargetDown", severity="ticket",
            expr=(f"group by (job, instance) (max_over_time(forge_engine_up[{EXPORTER_LOOKBACK}]))\n"
                  "unless on (job, instance)\ngroup by (job, instance) (forge_engine_up)"),
            summary="Forge exporter {{ $labels.instance }} (job {{ $labels.job }}) stopped reporting",
            description=f"{{{{ $labels.instance }}}} reported forge_engine_up within the last {EXPORTER_LOOKBACK} "
                        "and reports nothing now: the exporter is down or no longer scraped, so every engine alert "
                        "behind it is blind.",
        ),
        AlertRule(
            alert="ForgeKVCacheNearFull", severity="ticket", for_=KV_NEAR_FULL_FOR,
            expr=f"max by ({REPLICA_BY}) (forge_kv_cache_usage_ratio) > {_num(KV_NEAR_FULL_RATIO)}",
            summary=f"KV cache of {_TARGET} is {{{{ $value | humanizePercentage }}}} full",
            description=f"KV-cache usage has stayed above {KV_NEAR_FULL_RATIO:.0%} for {KV_NEAR_FULL_FOR} "
                        "(now {{ $value | humanizePercentage }}). The next burst or long prompt forces "
                        "preemptions and queueing.",
        ),
        AlertRule(
            alert="ForgePreemptionStorm", severity="ticket", for_=PREEMPTION_FOR,
            expr=(f"sum by ({REPLICA_BY}) (rate(forge_preemptions_total[5m]))\n"
                  f"/ sum by ({REPLICA_BY}) (rate(forge_requests_total[5m]))\n"
                  f"> {_num(PREEMPTIONS_PER_REQUEST)}"),
            summary=f"Preemption storm on {_TARGET}",
            description="{{ $value | humanize }} preemptions per finished request over 5 m (threshold "
                        f"{_num(PREEMPTIONS_PER_REQUEST)}, for {PREEMPTION_FOR}): the KV cache can't hold the "
                        "running batch, requests are evicted and recomputed, and latency rises.",
        ),
        AlertRule(
            alert="ForgeQueueBuildUp", severity="ticket", for_=QUEUE_FOR,
            expr=f"min by ({REPLICA_BY}) (min_over_time(forge_requests_waiting[{QUEUE_WINDOW}])) > 0",
            summary=f"Requests keep queueing on {_TARGET}",
            description=f"The engine's queue has not emptied for {QUEUE_WINDOW} (at least {{{{ $value }}}} waiting "
                        "all along): demand exceeds what the replica can schedule. TTFT grows with the queue.",
        ),
        AlertRule(
            alert="ForgeSpecAcceptanceCollapse", severity="ticket", for_=COLLAPSE_WINDOW,
            expr=collapse(spec_record, settings.expected_spec_acceptance_rate),
            summary=f"Speculative-decoding acceptance collapsed on {_TARGET}",
            description=f"Draft acceptance averaged {{{{ $value | humanizePercentage }}}} over {COLLAPSE_WINDOW}, "
                        f"below {baseline_words(settings.expected_spec_acceptance_rate)}. Speculation now costs "
                        "compute without saving decode steps: ITL and throughput get worse, not better.",
        ),
        AlertRule(
            alert="ForgePrefixCacheHitRatioDrop", severity="ticket", for_=COLLAPSE_WINDOW,
            expr=collapse(prefix_record, settings.expected_prefix_cache_hit_ratio),
            summary=f"Prefix-cache hit ratio dropped on {_TARGET}",
            description=f"Prefix-cache hits averaged {{{{ $value | humanizePercentage }}}} of prompt tokens over "
                        f"{COLLAPSE_WINDOW}, below {baseline_words(settings.expected_prefix_cache_hit_ratio)}. "
                        "More prefill per request: TTFT and GPU time per request rise.",
        ),
    ]


def _bit_set(series: str, bit: int) -> str:
    """PromQL has no bitwise operators on values: test one bit of a bitmask gauge arithmetically."""
    return f"floor({series} / {bit}) % 2 == 1"


def _gpu_alerts() -> list[AlertRule]:
    critical = " or ".join(f"DCGM_FI_DEV_XID_ERRORS == {code}" for code in CRITICAL_XIDS)
    # NVML clocks-throttle-reason bits (nvml.h): 0x20 SW thermal slowdown, 0x40 HW thermal slowdown.
    thermal_bits = f"({_bit_set('DCGM_FI_DEV_CLOCK_THROTTLE_REASONS', 0x20)}) or " \
                   f"({_bit_set('DCGM_FI_DEV_CLOCK_THROTTLE_REASONS', 0x40)})"
    return [
        AlertRule(
            alert="ForgeGPUXidCritical", severity="page", expr=critical,
            summary=f"{_GPU} reported critical XID {{{{ $value }}}}",
            description="XID {{ $value }} means failing memory (ECC, row remapping), a failing NVLink or a GPU "
                        "that fell off the bus. Work on this GPU is wrong or lost; drain the node and reset or "
                        "replace the GPU.",
        ),
        AlertRule(
            alert="ForgeGPUXidError", severity="ticket",
            expr=f"DCGM_FI_DEV_XID_ERRORS > 0\nunless\n({critical})",
            summary=f"{_GPU} reported XID {{{{ $value }}}}",
            description="The driver logged XID {{ $value }}: often an application fault (illegal memory access, "
                        "13/31/43) that crashed or stalled a CUDA context. Check whether the engine restarted and "
                        "whether the code repeats.",
        ),
        AlertRule(
            alert="ForgeGPUEccUncorrectable", severity="page",
            # Volatile counts reset only when the driver reloads (GPU reset), which is also the fix: the alert
            # stays until someone acted, instead of resolving 10 minutes after the error.
            expr="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL > 0",
            summary=f"{_GPU}: uncorrectable (double-bit) ECC errors",
            description="{{ $value }} double-bit ECC errors since the driver loaded. Data in GPU memory was "
                        "corrupted; the engine on this GPU may return wrong tokens or crash. Drain, then reset the GPU.",
        ),
        AlertRule(
            alert="ForgeGPURowRemapFailure", severity="page",
            expr="DCGM_FI_DEV_ROW_REMAP_FAILURE == 1",
            summary=f"{_GPU}: memory row remapping failed",
            description="The GPU ran out of spare rows to remap failing memory: it needs service (RMA). "
                        "Take it out of the pool.",
        ),
        AlertRule(
            alert="ForgeGPUTemperatureHigh", severity="ticket", for_="5m",
            expr=f"DCGM_FI_DEV_GPU_TEMP > {GPU_TEMP_CELSIUS}",
            summary=f"{_GPU} is at {{{{ $value }}}} °C",
            description=f"GPU temperature above {GPU_TEMP_CELSIUS} °C for 5 m (now {{{{ $value }}}} °C): close to "
                        "thermal slowdown, after which clocks drop and latency rises.",
        ),
        AlertRule(
            alert="ForgeGPUThermalThrottling", severity="ticket", for_="10m",
            expr=f"rate(DCGM_FI_DEV_THERMAL_VIOLATION[5m]) / 1e6 > {_num(THROTTLED_SHARE)}\nor\n{thermal_bits}",
            summary=f"{_GPU} is thermally throttled",
            description="Clocks are held down by thermal limits {{ $value | humanizePercentage }} of the time "
                        "(100% when read from the throttle-reason bits). Every token on this GPU is slower.",
        ),
        AlertRule(
            alert="ForgeGPUPowerThrottling", severity="info", for_="15m",
            expr=f"rate(DCGM_FI_DEV_POWER_VIOLATION[5m]) / 1e6 > {_num(POWER_THROTTLED_SHARE)}",
            summary=f"{_GPU} is power-capped {{{{ $value | humanizePercentage }}}} of the time",
            description="The power limit held clocks down for {{ $value | humanizePercentage }} of the last 5 m. "
                        "Normal at full load; a lowered power limit or a bad PSU shows here first.",
        ),
        AlertRule(
            alert="ForgeGPUMemoryNearFull", severity="ticket", for_="10m",
            expr=("DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)\n"
                  f"> {_num(GPU_MEMORY_FULL_RATIO)}"),
            summary=f"{_GPU} memory is {{{{ $value | humanizePercentage }}}} full",
            description=f"GPU framebuffer usage above {GPU_MEMORY_FULL_RATIO:.0%} for 10 m. The engine's next "
                        "allocation outside its KV pool fails with CUDA out-of-memory.",
        ),
    ]


# ----------------------------------------------------------------------------------------------- cost

COST_OVER_BUDGET_FOR = "30m"    # the recording already averages an hour; half an hour more of it is a trend, not
                                # one quiet hour
IDLE_WINDOW = "1h"              # an hour with no request running or finished: capacity nobody uses, not a lull
IDLE_FOR = "15m"                # min_over_time reads less than an hour right after a Prometheus restart
BUDGET_SERIES = "forge_cost_budget_usd_per_1m_output_tokens"
COST_PER_1M_OUTPUT = "forge:cost_usd_per_1m_output_tokens"
COST_BY = "team, cost_center, model"


def _budget_words(budget: float | None) -> str:
    return (f"{_num(budget)} USD per 1M output tokens (deploy.yaml slo.cost_budget_usd_per_1m_output_tokens)"
            if budget is not None else f"per model from {BUDGET_SERIES} (the exporter exports deploy.yaml's)")


def _cost_records() -> list[RecordingRule]:
    """The cost views, defined once in forge/exporters/cost.py next to the series they read."""
    return [RecordingRule(name, expr) for name, expr in COST_RECORDING_RULES.items()]


def _cost_alerts(settings: Settings) -> list[AlertRule]:
    budget = settings.cost_budget_usd_per_1m_output_tokens
    # `< +Inf`: an hour without output tokens divides by zero; that replica's GPUs are ForgeIdleGPUWaste's case.
    spend = f"({COST_PER_1M_OUTPUT} < +Inf)"
    if budget is not None:
        over = f"{spend}\n> {_num(budget)}"
        budget_text = f"{_num(budget)} USD"
    else:
        # One generic file for every deployment: each model's budget comes with its cost series.
        over = f"{spend}\n> on ({COST_BY})\nmax by ({COST_BY}) ({BUDGET_SERIES})"
        budget_text = (f'{{{{ with printf "max({BUDGET_SERIES}{{model=%q}})" $labels.model | query }}}}'
                       f'{{{{ . | first | value | printf "%.2f" }}}}{{{{ end }}}} USD')
    return [
        AlertRule(
            alert="ForgeCostPerMillionTokensOverBudget", severity="ticket", for_=COST_OVER_BUDGET_FOR,
            expr=over,
            summary="GPU cost of {{ $labels.model }} (team {{ $labels.team }}) is "
                    "{{ $value | printf \"%.2f\" }} USD per 1M output tokens, over budget",
            description="Over the last hour the GPUs of {{ $labels.model }} cost {{ $value | printf \"%.2f\" }} USD "
                        f"per million output tokens, above the budget of {budget_text} "
                        f"(deploy.yaml slo.cost_budget_usd_per_1m_output_tokens), for {COST_OVER_BUDGET_FOR}. "
                        "Either traffic fell below what the replicas are sized for, or each token got dearer "
                        "(longer outputs, a slower engine, a pricier GPU).",
        ),
        AlertRule(
            alert="ForgeIdleGPUWaste", severity="ticket", for_=IDLE_FOR,
            expr=(f"(\n  min_over_time(forge:idle_gpus[{IDLE_WINDOW}]) > 0\n"
                  f"  unless on (replica)\n"
                  f"  sum by (replica) (increase(forge_requests_total[{IDLE_WINDOW}])) > 0\n)\n"
                  f"* on (replica) group_left ()\nmax by (replica) (forge_gpu_price_usd_per_hour)"),
            summary="Replica {{ $labels.replica }} (team {{ $labels.team }}) served nothing for "
                    f"{IDLE_WINDOW}: {{{{ $value | printf \"%.2f\" }}}} USD per hour of idle GPUs",
            description=f"No request ran on or finished at {{{{ $labels.replica }}}} for {IDLE_WINDOW}, yet its GPUs "
                        "are paid for: {{ $value | printf \"%.2f\" }} USD per hour wasted (idle GPUs x price per "
                        "GPU-hour; cost center {{ $labels.cost_center }}). Scale it in, or route traffic to it.",
        ),
    ]


# ----------------------------------------------------------------------------------------------- assembly

def build_rules(settings: Settings | None = None, catalog: Catalog | None = None) -> RuleSet:
    settings = settings or Settings()
    catalog = catalog or get_catalog()
    notes: list[str] = []
    groups = [
        _derived_group(settings, catalog),
        *_slo_groups(settings, notes, catalog),
        RuleGroup(f"{settings.group_prefix}-engine-alerts", _engine_alerts(settings, catalog)),
        RuleGroup(f"{settings.group_prefix}-gpu-alerts", _gpu_alerts()),
        RuleGroup(f"{settings.group_prefix}-cost", _cost_records()),
        RuleGroup(f"{settings.group_prefix}-cost-alerts", _cost_alerts(settings)),
    ]
    names = [a.alert for g in groups for a in g.rules if isinstance(a, AlertRule)]
    assert len(names) == len(set(names)), "alert names must be unique (one runbook page each)"
    return RuleSet(groups, settings, notes)


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line PromQL as literal blocks, so the committed file reads like hand-written rules.
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str_representer)


def render(rules: RuleSet, source: str) -> str:
    """The Prometheus rule file (YAML) with a header naming the command that made it."""
    body = {"groups": [
        {"name": g.name, **({"interval": g.interval} if g.interval else {}),
         "rules": [r.to_dict(rules.settings.runbook_base_url) if isinstance(r, AlertRule) else r.to_dict()
                   for r in g.rules]}
        for g in rules.groups]}
    slo = rules.settings.slo
    header = [
        f"# Generated by `{source}` — do not edit; a test compares this file with a fresh generation.",
        "# Reads only canonical Forge signals (docs/signals.md); runbooks in runbooks/<AlertName>.md.",
        f"# SLOs: ttft_p95_seconds={slo.ttft_p95_seconds} itl_p95_seconds={slo.itl_p95_seconds} "
        f"availability={slo.availability} window_days={slo.window_days}",
        f"# Cost budget: {_budget_words(rules.settings.cost_budget_usd_per_1m_output_tokens)}",
        *[f"# Note: {n}" for n in rules.notes],
    ]
    return "\n".join(header) + "\n" + yaml.dump(body, Dumper=_Dumper, sort_keys=False, width=4096,
                                                 allow_unicode=True)


def bucket_bounds_from_page(text: str, where: str) -> dict[str, tuple[float, ...]]:
    """Bucket bounds of the latency histograms on a real /metrics page (any engine the catalog knows)."""
    from forge.exporters.normalize import Histogram, normalize

    page = normalize(text)
    bounds: dict[str, tuple[float, ...]] = {}
    for name in VLLM_BUCKET_BOUNDS:
        family = page.families.get(name)
        if family is None:
            continue
        first = next((v for v in family.series.values() if isinstance(v, Histogram)), None)
        if first is not None:
            bounds[name] = first.bounds()
    if not bounds:
        raise InputError(f"{where}: no TTFT or ITL histogram on this page ({page.dialect}) — pass the /metrics of "
                         "an engine that exports them")
    return bounds


__all__ = ["AlertRule", "BurnWindow", "DEFAULT_SLO", "RecordingRule", "RuleSet", "Settings", "SloTargets",
           "build_rules", "burn_factor", "burn_windows", "render", "settings_from_deployment", "slo_bucket"]
