"""Grafana dashboards (grafanalib) from the signal catalog, the alert rules' recording rules and deploy.yaml.

    dashboards = build_dashboards(DashboardSettings())                            # generic: default SLOs
    dashboards = build_dashboards(settings_from_deployment(deployment, base_dir))  # one deployment's SLOs
    write_dashboards(dashboards, Path("dashboards/generated"))

Every query reads canonical catalog signals (``forge_*``, DCGM field names), the cost exporter's series
(``forge/exporters/cost.py``) or recording rules that ``forge alerts build`` writes; ``dashboards/validate.py``
proves it. Panels read raw series where they can (the dashboard then works before the rules are loaded, and
honours the team/replica filters, which the model-level recording rules sum away); only the SLO dashboard needs
the rules, for its burn-rate windows of up to days.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from grafanalib.core import (Dashboard, GridPos, Stat, Table, Target, Template, Templating, Threshold, Time,
                             TimeSeries)
from grafanalib._gen import DashboardEncoder

from forge.alerts import generate as alerts
from forge.catalog import get_catalog

# Grafana 9.0's schema: every panel type used here exists since then, and newer Grafanas migrate it on import.
SCHEMA_VERSION = 37
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"          # Grafana's rate window: at least four scrape intervals, never empty
QUANTILES = alerts.LATENCY_QUANTILES
TAGS = ["forge", "llm-inference"]

# Filters of engine series. allValue ".*" also matches a series without the label (team is optional).
ENGINE_SELECTOR = 'model=~"$model", replica=~"$replica", team=~"$team"'
# Cost series (forge/exporters/cost.py) carry replica/model/team/cost_center, no engine.
COST_SELECTOR = ENGINE_SELECTOR
# dcgm-exporter labels (catalog gpu_labels); GPU series have no model/replica.
GPU_SELECTOR = 'Hostname=~"$hostname", gpu=~"$gpu"'

GREEN, YELLOW, ORANGE, RED = "green", "#EAB839", "orange", "red"


# ----------------------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class CapacityPrediction:
    """What the capacity model (forge.readiness.capacity.estimate) predicts for one replica."""

    max_concurrent_sequences: int | None
    max_requests_per_second_per_replica: float | None
    decode_tokens_per_second_per_gpu: float | None
    gpus_per_replica: int
    # At the declared traffic (growth multiplier 1): the cost the model expects, a reference line for the
    # measured cost. None without traffic or a price.
    cost_per_million_output_tokens: float | None = None
    cost_per_million_input_tokens: float | None = None
    cost_per_successful_request: float | None = None


@dataclass(frozen=True)
class DashboardSettings:
    slo: alerts.SloTargets = alerts.DEFAULT_SLO
    e2e_p95_seconds: float | None = None
    expected_prefix_cache_hit_ratio: float | None = None
    expected_spec_acceptance_rate: float | None = None
    max_num_seqs: int | None = None
    min_replicas: int | None = None
    capacity: CapacityPrediction | None = None
    name: str = "forge"                   # uid and title prefix
    notes: list[str] = field(default_factory=list)

    @property
    def title_suffix(self) -> str:
        return "" if self.name == "forge" else f" ({self.name})"

    def alert_settings(self) -> alerts.Settings:
        return alerts.Settings(slo=self.slo)


def settings_from_deployment(deployment: Any, base_dir: Path | None = None) -> DashboardSettings:
    """Thresholds from deploy.yaml's `slo:`, engine args and the capacity model's prediction."""
    from forge.readiness.capacity import estimate

    alert_settings = alerts.settings_from_deployment(deployment)
    notes: list[str] = []
    capacity = None
    try:
        est = estimate(deployment, base_dir)
    except Exception as exc:  # noqa: BLE001 — a model the capacity model can't size still gets dashboards
        notes.append(f"capacity model: {str(exc).splitlines()[0]} — no predicted-capacity thresholds")
    else:
        at_declared = next((p for p in est.growth if p.multiplier == 1.0), None)
        capacity = CapacityPrediction(
            max_concurrent_sequences=est.max_concurrent_sequences,
            max_requests_per_second_per_replica=est.max_requests_per_second_per_replica,
            decode_tokens_per_second_per_gpu=est.decode_tokens_per_second_per_gpu,
            gpus_per_replica=est.gpus_per_replica,
            cost_per_million_output_tokens=at_declared.cost_per_million_output_tokens if at_declared else None,
            cost_per_million_input_tokens=at_declared.cost_per_million_input_tokens if at_declared else None,
            cost_per_successful_request=at_declared.cost_per_successful_request if at_declared else None,
        )
        notes.extend(f"capacity model: {n}" for n in est.notes)
    slo = deployment.slo
    return DashboardSettings(
        slo=alert_settings.slo,
        e2e_p95_seconds=slo.e2e_p95_seconds if slo else None,
        expected_prefix_cache_hit_ratio=alert_settings.expected_prefix_cache_hit_ratio,
        expected_spec_acceptance_rate=alert_settings.expected_spec_acceptance_rate,
        max_num_seqs=deployment.engine.args.max_num_seqs,
        min_replicas=deployment.hardware.replicas.min if deployment.hardware.replicas else None,
        capacity=capacity,
        name=alert_settings.group_prefix,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------- thresholds

def above(*limits: float | None) -> list[Threshold]:
    """Green below, then yellow/red at each known limit (higher is worse). Unknown limits are left out."""
    known = sorted({_readable(v) for v in limits if v is not None})
    colours = {0: [], 1: [RED], 2: [YELLOW, RED]}.get(len(known), [YELLOW, *[ORANGE] * (len(known) - 2), RED])
    return [Threshold(GREEN, 0, 0.0), *(Threshold(c, i + 1, v) for i, (c, v) in enumerate(zip(colours, known)))]


def below(limit: float | None) -> list[Threshold]:
    """Red below the limit, green from it (lower is worse: hit ratios, replicas up, budget left)."""
    if limit is None:
        return [Threshold(GREEN, 0, 0.0)]
    return [Threshold(RED, 0, 0.0), Threshold(GREEN, 1, _readable(limit))]


def _readable(value: float) -> float:
    """Model predictions to 4 significant digits: 159.8 req/s, not 159.80588386405174 (noise in the JSON)."""
    return float(f"{value:.4g}")


# ----------------------------------------------------------------------------------------------- panels

def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False, table: bool = False) -> Target:
    return Target(expr=expr, legendFormat=legend, refId=ref, datasource=DATASOURCE, instant=instant,
                  format="table" if table else "time_series")


def targets(*pairs: tuple[str, str]) -> list[Target]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def timeseries(title: str, description: str, unit: str, thresholds: list[Threshold], queries: list[Target],
               **kw: Any) -> TimeSeries:
    # Threshold lines are drawn only when a real limit exists (more than the base step).
    return TimeSeries(title=title, description=description, unit=unit, thresholds=thresholds, targets=queries,
                      dataSource=DATASOURCE, thresholdsStyleMode="line" if len(thresholds) > 1 else "off",
                      tooltipMode="multi", legendDisplayMode="table", legendCalcs=["lastNotNull", "max"], **kw)


def stat(title: str, description: str, unit: str, thresholds: list[Threshold], queries: list[Target],
         reduce: str = "lastNotNull") -> Stat:
    return Stat(title=title, description=description, format=unit, thresholds=thresholds, targets=queries,
                dataSource=DATASOURCE, reduceCalc=reduce, graphMode="area", colorMode="value")


def table(title: str, description: str, unit: str, thresholds: list[Threshold], queries: list[Target]) -> Table:
    return Table(title=title, description=description, unit=unit, thresholds=thresholds, targets=queries,
                 dataSource=DATASOURCE, displayMode="color-text",
                 transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}])


def latency_quantiles(signal: str, selector: str, by: str) -> list[Target]:
    return targets(*[(f"histogram_quantile({q:g}, sum by ({by}, le) (rate({signal}_bucket{{{selector}}}[{RATE}])))",
                      f"p{round(q * 100)} {{{{{by.split(', ')[-1]}}}}}") for q in QUANTILES])


_CANONICAL_SERIES = re.compile(r"\b((?:forge|DCGM)_[A-Za-z0-9_]+)\b(?!\s*[{(])")


def with_selector(expr: str, selector: str) -> str:
    """Add label matchers to every bare series of a catalog PromQL template (which has no selector slot)."""
    return _CANONICAL_SERIES.sub(lambda m: f"{m[1]}{{{selector}}}", expr)


def derived(name: str, selector: str, by: str = "model, replica") -> str:
    return with_selector(get_catalog().derived[name].expr(RATE, by), selector)


# ----------------------------------------------------------------------------------------------- layout

def grid(panels: list[Any], width: int = 12, height: int = 8) -> list[Any]:
    """Lay panels out left to right, `width` of Grafana's 24 columns each; ids in order (stable JSON)."""
    placed, x, y, row_height = [], 0, 0, 0
    for number, panel in enumerate(panels, start=1):
        w = getattr(panel, "_forge_width", width)
        h = 5 if isinstance(panel, Stat) else height
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        panel.gridPos = GridPos(h=h, w=w, x=x, y=y)
        panel.id = number
        x, row_height = x + w, max(row_height, h)
        placed.append(panel)
    return placed


def sized(panel: Any, width: int) -> Any:
    panel._forge_width = width
    return panel


# ----------------------------------------------------------------------------------------------- variables

def datasource_variable() -> Template:
    return Template(name="datasource", label="Data source", query="prometheus", type="datasource", default=None)


def query_variable(name: str, label: str, query: str) -> Template:
    # Multi-select with All = ".*", so a series without the label (team is optional) still matches.
    return Template(name=name, label=label, query=query, dataSource=DATASOURCE, includeAll=True, multi=True,
                    allValue=".*", default="$__all", refresh=2)


def engine_variables() -> list[Template]:
    return [
        datasource_variable(),
        query_variable("model", "Model", "label_values(forge_engine_up, model)"),
        query_variable("team", "Team", 'label_values(forge_engine_up{model=~"$model"}, team)'),
        query_variable("replica", "Replica", 'label_values(forge_engine_up{model=~"$model", team=~"$team"}, replica)'),
    ]


def gpu_variables() -> list[Template]:
    return [
        datasource_variable(),
        query_variable("hostname", "Host", "label_values(DCGM_FI_DEV_GPU_UTIL, Hostname)"),
        query_variable("gpu", "GPU", 'label_values(DCGM_FI_DEV_GPU_UTIL{Hostname=~"$hostname"}, gpu)'),
    ]


def dashboard(settings: DashboardSettings, slug: str, title: str, description: str, panels: list[Any],
              variables: list[Template], time_from: str = "now-6h") -> Dashboard:
    return Dashboard(
        title=f"Forge · {title}{settings.title_suffix}", uid=f"{settings.name}-{slug}"[:40], description=description,
        tags=TAGS, panels=grid(panels), templating=Templating(list=variables), time=Time(time_from, "now"),
        schemaVersion=SCHEMA_VERSION, refresh="30s", graphTooltip=1, timezone="browser",
    )


# ----------------------------------------------------------------------------------------------- dashboards

def fleet_overview(s: DashboardSettings) -> Dashboard:
    sel = ENGINE_SELECTOR
    budget = None if s.slo.availability is None else 1 - s.slo.availability
    panels = [
        sized(stat("Replicas up", "Engines the Forge exporter scraped successfully (forge_engine_up). Threshold: "
                   "deploy.yaml's hardware.replicas.min.", "none", below(s.min_replicas or 1),
                   [target(f"sum(forge_engine_up{{{sel}}})")]), 6),
        sized(stat("Requests / s", "Finished requests per second, all outcomes.", "reqps", above(),
                   [target(f"sum(rate(forge_requests_total{{{sel}}}[{RATE}]))")]), 6),
        sized(stat("Error ratio", "Server errors / finished requests (client aborts excluded). Threshold: the "
                   "availability SLO's error budget.", "percentunit", above(budget),
                   [target(f"sum(rate(forge_requests_total{{outcome=\"error\", {sel}}}[{RATE}])) / "
                           f"sum(rate(forge_requests_total{{{sel}}}[{RATE}]))")]), 6),
        sized(stat("Output tokens / s", "Generated tokens per second.", "short", above(),
                   [target(f"sum(rate(forge_generation_tokens_total{{{sel}}}[{RATE}]))")]), 6),
        timeseries("Traffic by outcome", "Finished requests per second by outcome (success | error | aborted).",
                   "reqps", above(),
                   targets((f"sum by (model, outcome) (rate(forge_requests_total{{{sel}}}[{RATE}]))",
                            "{{model}} {{outcome}}"))),
        timeseries("Errors", "Share of finished requests that ended in a server error, per model. Threshold: the "
                   "availability SLO's error budget.", "percentunit", above(budget),
                   targets((f"sum by (model) (rate(forge_requests_total{{outcome=\"error\", {sel}}}[{RATE}]))\n"
                            f"/ sum by (model) (rate(forge_requests_total{{{sel}}}[{RATE}]))", "{{model}}"))),
        timeseries("Time to first token", "TTFT p50/p95/p99 from the forge_ttft_seconds histogram. Threshold: "
                   "the TTFT p95 SLO.", "s", above(s.slo.ttft_p95_seconds),
                   latency_quantiles("forge_ttft_seconds", sel, "model")),
        timeseries("Inter-token latency", "ITL p50/p95/p99 (one observation per token gap). Threshold: the ITL "
                   "p95 SLO.", "s", above(s.slo.itl_p95_seconds), latency_quantiles("forge_itl_seconds", sel, "model")),
        timeseries("End-to-end latency", "Request latency p50/p95/p99, arrival to last token. Threshold: the "
                   "e2e p95 SLO (deploy.yaml slo.e2e_p95_seconds).", "s", above(s.e2e_p95_seconds),
                   latency_quantiles("forge_e2e_latency_seconds", sel, "model")),
        timeseries("Token throughput", "Prompt and output tokens per second.", "short", above(),
                   targets((f"sum by (model) (rate(forge_prompt_tokens_total{{{sel}}}[{RATE}]))", "prompt {{model}}"),
                           (f"sum by (model) (rate(forge_generation_tokens_total{{{sel}}}[{RATE}]))",
                            "output {{model}}"))),
        timeseries("KV cache usage", "Fullest KV cache per replica. Threshold: ForgeKVCacheNearFull's "
                   f"{alerts.KV_NEAR_FULL_RATIO:.0%}.", "percentunit", above(alerts.KV_NEAR_FULL_RATIO),
                   targets((f"max by (model, replica) (forge_kv_cache_usage_ratio{{{sel}}})", "{{replica}}")),
                   valueMin=0, valueMax=1),
        timeseries("Queue", "Requests waiting to be scheduled, per replica. A queue that never empties fires "
                   "ForgeQueueBuildUp.", "short", above(1),
                   targets((f"sum by (model, replica) (forge_requests_waiting{{{sel}}})", "{{replica}}"))),
    ]
    return dashboard(s, "fleet-overview", "Fleet overview", "Golden signals of every LLM engine: traffic, errors, "
                     "latency, saturation.", panels, engine_variables())


def engine_deep_dive(s: DashboardSettings) -> Dashboard:
    sel = ENGINE_SELECTOR
    prefix_floor = (None if s.expected_prefix_cache_hit_ratio is None
                    else alerts.COLLAPSE_FACTOR * s.expected_prefix_cache_hit_ratio)
    spec_floor = (None if s.expected_spec_acceptance_rate is None
                  else alerts.COLLAPSE_FACTOR * s.expected_spec_acceptance_rate)

    def mean(signal: str) -> str:
        return (f"sum by (replica) (rate({signal}_sum{{{sel}}}[{RATE}]))\n"
                f"/ sum by (replica) (rate({signal}_count{{{sel}}}[{RATE}]))")

    panels = [
        timeseries("Running and waiting", "Requests in the running batch and in the queue, per replica. Threshold: "
                   "engine.args.max_num_seqs, the most the scheduler runs at once.", "short", above(s.max_num_seqs),
                   targets((f"sum by (replica) (forge_requests_running{{{sel}}})", "running {{replica}}"),
                           (f"sum by (replica) (forge_requests_waiting{{{sel}}})", "waiting {{replica}}"))),
        timeseries("Batch size", "Mean running requests per replica over the interval (the decode batch). "
                   "Threshold: max_num_seqs.", "short", above(s.max_num_seqs),
                   targets((f"sum by (replica) (avg_over_time(forge_requests_running{{{sel}}}[{RATE}]))",
                            "{{replica}}"))),
        timeseries("Preemptions per finished request", "KV-cache evictions per finished request. Threshold: "
                   f"ForgePreemptionStorm's {alerts.PREEMPTIONS_PER_REQUEST:g}.", "short",
                   above(alerts.PREEMPTIONS_PER_REQUEST),
                   targets((f"sum by (replica) (rate(forge_preemptions_total{{{sel}}}[{RATE}]))\n"
                            f"/ sum by (replica) (rate(forge_requests_total{{{sel}}}[{RATE}]))", "{{replica}}"))),
        timeseries("Prefill vs decode time", "Mean prefill (first scheduled to first token) and decode (first to "
                   "last token) time per request. Threshold: TTFT p95 SLO (prefill is part of TTFT) and e2e SLO.",
                   "s", above(s.slo.ttft_p95_seconds, s.e2e_p95_seconds),
                   targets((mean("forge_prefill_time_seconds"), "prefill {{replica}}"),
                           (mean("forge_decode_time_seconds"), "decode {{replica}}"))),
        timeseries("Queue time", "Queue-time p95 per replica (forge_queue_time_seconds). Threshold: the TTFT p95 "
                   "SLO, which queueing eats into.", "s", above(s.slo.ttft_p95_seconds),
                   latency_quantiles("forge_queue_time_seconds", sel, "replica")[1:2]),
        timeseries("KV cache usage", "Per replica. Threshold: ForgeKVCacheNearFull's "
                   f"{alerts.KV_NEAR_FULL_RATIO:.0%}.", "percentunit", above(alerts.KV_NEAR_FULL_RATIO),
                   targets((f"max by (replica) (forge_kv_cache_usage_ratio{{{sel}}})", "{{replica}}")),
                   valueMin=0, valueMax=1),
        timeseries("Prefix-cache hit ratio", "Prompt tokens found in the prefix cache (catalog forge:prefix_cache_"
                   "hit_ratio). Threshold: ForgePrefixCacheHitRatioDrop's floor, half of deploy.yaml's "
                   "traffic.prefix_cache_hit_rate.", "percentunit", below(prefix_floor),
                   targets((derived("forge:prefix_cache_hit_ratio", sel, "replica"), "{{replica}}")),
                   valueMin=0, valueMax=1),
        timeseries("Speculative acceptance", "Draft tokens the target model accepted (catalog forge:spec_acceptance_"
                   "rate). Threshold: ForgeSpecAcceptanceCollapse's floor, half of speculative_config."
                   "expected_acceptance_rate.", "percentunit", below(spec_floor),
                   targets((derived("forge:spec_acceptance_rate", sel, "replica"), "{{replica}}")),
                   valueMin=0, valueMax=1),
    ]
    return dashboard(s, "engine-deep-dive", "Engine deep dive", "Per replica: scheduling, batching, preemption, "
                     "prefill/decode split, prefix cache and speculative decoding.", panels, engine_variables())


def gpu_health(s: DashboardSettings) -> Dashboard:
    sel = GPU_SELECTOR
    legend = "{{Hostname}} GPU {{gpu}}"
    panels = [
        timeseries("GPU utilization", "Share of time a kernel ran (DCGM_FI_DEV_GPU_UTIL).", "percent", above(),
                   targets((f"DCGM_FI_DEV_GPU_UTIL{{{sel}}}", legend)), valueMin=0, valueMax=100),
        timeseries("GPU memory used", "Framebuffer used / total. Threshold: ForgeGPUMemoryNearFull's "
                   f"{alerts.GPU_MEMORY_FULL_RATIO:.0%}.", "percentunit", above(alerts.GPU_MEMORY_FULL_RATIO),
                   targets((f"DCGM_FI_DEV_FB_USED{{{sel}}}\n/ (DCGM_FI_DEV_FB_USED{{{sel}}} + "
                            f"DCGM_FI_DEV_FB_FREE{{{sel}}})", legend)), valueMin=0, valueMax=1),
        timeseries("Power draw", "DCGM_FI_DEV_POWER_USAGE.", "watt", above(),
                   targets((f"DCGM_FI_DEV_POWER_USAGE{{{sel}}}", legend))),
        timeseries("Temperature", "GPU and memory (HBM) temperature. Threshold: ForgeGPUTemperatureHigh's "
                   f"{alerts.GPU_TEMP_CELSIUS} °C.", "celsius", above(alerts.GPU_TEMP_CELSIUS),
                   targets((f"DCGM_FI_DEV_GPU_TEMP{{{sel}}}", "GPU " + legend),
                           (f"DCGM_FI_DEV_MEMORY_TEMP{{{sel}}}", "HBM " + legend))),
        timeseries("ECC errors and row remapping", "Volatile ECC errors since the driver loaded and remapped "
                   "rows. Threshold: any double-bit error or remap failure pages.", "short", above(1),
                   targets((f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{sel}}}", "double-bit " + legend),
                           (f"DCGM_FI_DEV_ECC_SBE_VOL_TOTAL{{{sel}}}", "single-bit " + legend),
                           (f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{sel}}}", "uncorrectable rows " + legend),
                           (f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{sel}}}", "remap failure " + legend))),
        timeseries("XID errors", "Last XID the driver reported (a code, not a count; 0 = none). Codes "
                   + ", ".join(map(str, alerts.CRITICAL_XIDS)) + " page (ForgeGPUXidCritical).", "none", above(1),
                   targets((f"DCGM_FI_DEV_XID_ERRORS{{{sel}}}", legend)), drawStyle="points"),
        timeseries("Throttling", "Share of time clocks were held down by thermal or power limits. Thresholds: "
                   f"ForgeGPUThermalThrottling {alerts.THROTTLED_SHARE:.0%}, ForgeGPUPowerThrottling "
                   f"{alerts.POWER_THROTTLED_SHARE:.0%}.", "percentunit",
                   above(alerts.THROTTLED_SHARE, alerts.POWER_THROTTLED_SHARE),
                   # violation counters are in microseconds: per-second rate / 1e6 is the throttled share
                   targets((f"rate(DCGM_FI_DEV_THERMAL_VIOLATION{{{sel}}}[{RATE}]) / 1e6", "thermal " + legend),
                           (f"rate(DCGM_FI_DEV_POWER_VIOLATION{{{sel}}}[{RATE}]) / 1e6", "power " + legend))),
        timeseries("SM clock", "SM clock frequency; drops with throttling.", "hertz", above(),
                   # DCGM reports MHz
                   targets((f"DCGM_FI_DEV_SM_CLOCK{{{sel}}} * 1e6", legend))),
    ]
    return dashboard(s, "gpu-health", "GPU health", "DCGM field names: works with dcgm-exporter and with Forge's "
                     "NVML collector.", panels, gpu_variables())


def cost_efficiency(s: DashboardSettings) -> Dashboard:
    sel = COST_SELECTOR
    cap = s.capacity or CapacityPrediction(None, None, None, 1)
    spent = f"sum by (model) (increase(forge_cost_usd_total{{{sel}}}[1h]))"
    # Idle replica GPUs, as forge.exporters.cost.RECORDING_RULES["forge:idle_gpus"], with the filters applied.
    idle_gpus = (f"sum(forge_replica_gpus{{{sel}}} * on (replica) "
                 f"(max by (replica) (max_over_time(forge_requests_running{{{sel}}}[5m])) == bool 0))")
    model_note = " Threshold: the capacity model's cost at deploy.yaml's declared traffic."
    panels = [
        timeseries("$ per 1M output tokens", "GPU spend over the last hour / output tokens (the whole GPU cost, as "
                   "forge:cost_usd_per_1m_output_tokens)." + model_note, "currencyUSD",
                   above(cap.cost_per_million_output_tokens),
                   targets((f"{spent}\n/ (sum by (model) (increase(forge_generation_tokens_total{{{sel}}}[1h])) / 1e6)",
                            "{{model}}"))),
        timeseries("$ per 1M input tokens", "GPU spend over the last hour / prompt tokens." + model_note,
                   "currencyUSD", above(cap.cost_per_million_input_tokens),
                   targets((f"{spent}\n/ (sum by (model) (increase(forge_prompt_tokens_total{{{sel}}}[1h])) / 1e6)",
                            "{{model}}"))),
        timeseries("$ per successful request", "GPU spend over the last hour / requests that succeeded."
                   + model_note, "currencyUSD", above(cap.cost_per_successful_request),
                   targets((f"{spent}\n/ sum by (model) (increase(forge_requests_total{{outcome=\"success\", "
                            f"{sel}}}[1h]))", "{{model}}"))),
        timeseries("Spend rate by team", "USD per hour of the replicas' GPUs (price × GPUs).", "currencyUSD",
                   above(), targets((f"sum by (team) (forge_gpu_price_usd_per_hour{{{sel}}} * on (replica) "
                                     f"group_left forge_replica_gpus{{{sel}}})", "{{team}}"))),
        sized(stat("Idle GPU-hours", "GPU-hours of replicas that ran no request for 5 minutes, over the dashboard's "
                   "time range.", "h", above(), [target(f"sum_over_time(({idle_gpus})[$__range:1m]) / 60",
                                                        instant=True)]), 8),
        sized(stat("Spend in range", "USD accrued by the replicas' GPUs over the dashboard's time range.",
                   "currencyUSD", above(), [target(f"sum(increase(forge_cost_usd_total{{{sel}}}[$__range]))",
                                                   instant=True)]), 8),
        sized(stat("Idle GPUs now", "GPUs of replicas that ran no request in the last 5 minutes.", "none", above(),
                   [target(idle_gpus)]), 8),
        timeseries("GPU utilization p10 / p50 / p95", "Distribution of DCGM_FI_DEV_GPU_UTIL across the fleet's "
                   "GPUs: a low p50 means paid GPUs doing little.", "percent", above(),
                   targets(*[(f"quantile({q:g}, avg_over_time(DCGM_FI_DEV_GPU_UTIL[{RATE}]))", f"p{round(q * 100)}")
                             for q in (0.1, 0.5, 0.95)]), valueMin=0, valueMax=100),
        sized(table("Chargeback by team", "USD accrued per team and cost center over the dashboard's time range "
                    "(deploy.yaml metadata.team / cost_center).", "currencyUSD", above(),
                    [target(f"sum by (team, cost_center) (increase(forge_cost_usd_total{{{sel}}}[$__range]))",
                            instant=True, table=True)]), 12),
    ]
    return dashboard(s, "cost-efficiency", "Cost & efficiency", "What the GPUs cost per token and per request, idle "
                     "GPU time and chargeback, from the Forge exporter's cost series.", panels, engine_variables(),
                     time_from="now-24h")


# Record bases of the SLIs in forge alerts build (`<base>:ratio_rate<window>`).
SLI_RECORDS = {"ttft": "model:forge_ttft_slo_miss", "itl": "model:forge_itl_slo_miss",
               "availability": "model:forge_error_ratio"}


def slo_error_budget(s: DashboardSettings) -> Dashboard:
    slo = s.slo
    objectives = [(key, title, objective, promise) for key, title, objective, promise in (
        ("ttft", "TTFT", 0.95 if slo.ttft_p95_seconds else None, f"p95 TTFT ≤ {slo.ttft_p95_seconds:g} s"
         if slo.ttft_p95_seconds else ""),
        ("itl", "ITL", 0.95 if slo.itl_p95_seconds else None, f"p95 ITL ≤ {slo.itl_p95_seconds:g} s"
         if slo.itl_p95_seconds else ""),
        ("availability", "Availability", slo.availability,
         f"{slo.availability * 100:g}% without server error" if slo.availability else ""),
    ) if objective is not None]
    recorded = {r.record for r in alerts.build_rules(s.alert_settings()).records()}
    pairs = alerts.burn_windows(slo.window_days)
    page = min((f for p, f in pairs if p.severity == "page"), default=None)
    ticket = min((f for p, f in pairs if p.severity == "ticket"), default=None)
    sel = 'model=~"$model"'   # SLO records are per (engine, model): team/replica are summed away
    panels: list[Any] = []
    for key, title, objective, promise in objectives:
        budget = 1 - objective

        def record(window: str) -> str:
            name = f"{SLI_RECORDS[key]}:ratio_rate{window}"
            # The dashboard is only as good as the rules it reads: fail the build, not the panel, on a rename.
            assert name in recorded, f"{name} is not a recording rule of forge alerts build"
            return name

        shortest = min((p.short for p, _ in pairs), key=alerts._seconds)
        panels.append(sized(stat(
            f"{title}: error budget left", f"{promise} over {slo.window_days} d: share of the budget "
            f"({alerts._num(budget * 100)}% bad events) not yet spent, from the {shortest} SLI averaged over the "
            "window. Red when spent.", "percentunit", below(0.0),
            [target(f"1 - avg_over_time({record(shortest)}{{{sel}}}[{slo.window_days}d]) / {alerts._num(budget)}",
                    "{{model}}")]), 6))
        panels.append(sized(timeseries(
            f"{title}: burn rate", f"Bad-event ratio / budget per long window ({promise}); 1 spends the budget "
            "exactly in the SLO window. Thresholds: the lowest ticket and page burn factors of the alerts.", "suffix:×",
            above(ticket, page),
            targets(*[(f"{record(p.long)}{{{sel}}} / {alerts._num(budget)}", f"{p.long} {{{{model}}}}")
                      for p, _ in pairs])), 18))
    if not panels:
        s.notes.append("no slo.ttft_p95_seconds / itl_p95_seconds / availability: the SLO dashboard has no panels")
    return dashboard(s, "slo-error-budget", "SLO & error budget", "Burn rates and error budget left per SLO, from "
                     "the recording rules of `forge alerts build` (load its rule file into Prometheus).",
                     panels, [datasource_variable(), query_variable("model", "Model", "label_values(forge_engine_up, model)")],
                     time_from="now-7d")


def capacity(s: DashboardSettings) -> Dashboard:
    sel = ENGINE_SELECTOR
    cap = s.capacity or CapacityPrediction(None, None, None, 1)
    panels: list[Any] = [
        timeseries("Running vs limit", "Running requests per replica. Thresholds: the capacity model's sequences "
                   "the KV cache holds at p95 prompt + output, and engine.args.max_num_seqs.", "short",
                   above(cap.max_concurrent_sequences, s.max_num_seqs),
                   targets((f"max by (replica) (forge_requests_running{{{sel}}})", "{{replica}}"))),
        timeseries("KV cache usage trend", "KV usage per replica and where its last hour's trend puts it in an "
                   f"hour. Thresholds: ForgeKVCacheNearFull's {alerts.KV_NEAR_FULL_RATIO:.0%} and full.",
                   "percentunit", above(alerts.KV_NEAR_FULL_RATIO, 1.0),
                   targets((f"max by (replica) (forge_kv_cache_usage_ratio{{{sel}}})", "now {{replica}}"),
                           (f"max by (replica) (predict_linear(forge_kv_cache_usage_ratio{{{sel}}}[1h], 3600))",
                            "in 1 h {{replica}}")), valueMin=0),
        timeseries("Request rate vs predicted capacity", "Finished requests per second per replica. Threshold: "
                   "the capacity model's highest SLO-meeting rate per replica.", "reqps",
                   above(cap.max_requests_per_second_per_replica),
                   targets((f"sum by (replica) (rate(forge_requests_total{{{sel}}}[{RATE}]))", "{{replica}}"))),
        timeseries("Output tokens / s per GPU vs predicted", "Generated tokens per second per GPU of each replica. "
                   "Threshold: the capacity model's decode throughput per GPU at its highest SLO-meeting rate.",
                   "short", above(cap.decode_tokens_per_second_per_gpu),
                   targets((f"sum by (replica) (rate(forge_generation_tokens_total{{{sel}}}[{RATE}])) / "
                            f"{cap.gpus_per_replica}", "{{replica}}"))),
    ]
    if s.max_num_seqs:
        panels.append(sized(timeseries(
            "Concurrency headroom", "1 − running / max_num_seqs per replica: room left in the scheduler's batch. "
            "Red below 10%.", "percentunit", below(0.1),
            targets((f"1 - max by (replica) (forge_requests_running{{{sel}}}) / {s.max_num_seqs}", "{{replica}}")),
            valueMin=0, valueMax=1), 24))
    return dashboard(s, "capacity", "Capacity", "Headroom of each replica against engine limits and the capacity "
                     "model's prediction (forge capacity; thresholds appear with `--deploy`).", panels,
                     engine_variables(), time_from="now-24h")


BUILDERS: dict[str, Callable[[DashboardSettings], Dashboard]] = {
    "fleet-overview": fleet_overview,
    "engine-deep-dive": engine_deep_dive,
    "gpu-health": gpu_health,
    "cost-efficiency": cost_efficiency,
    "slo-error-budget": slo_error_budget,
    "capacity": capacity,
}


# ----------------------------------------------------------------------------------------------- output

def _clean(node: Any) -> Any:
    """grafanalib writes the base threshold step's value as the string "null"; Grafana's schema says null."""
    if isinstance(node, dict):
        out = {k: _clean(v) for k, v in node.items()}
        if "color" in out and out.get("value") == "null":
            out["value"] = None
        return out
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def to_json(board: Dashboard) -> dict[str, Any]:
    return _clean(json.loads(json.dumps(board.to_json_data(), cls=DashboardEncoder)))


def build_dashboards(settings: DashboardSettings | None = None) -> dict[str, dict[str, Any]]:
    """file name -> dashboard JSON model."""
    settings = settings or DashboardSettings()
    return {f"{slug}.json": to_json(builder(settings)) for slug, builder in BUILDERS.items()}


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


__all__ = ["BUILDERS", "CapacityPrediction", "DashboardSettings", "SCHEMA_VERSION", "build_dashboards", "render",
           "settings_from_deployment", "to_json", "with_selector"]
