"""Dimension 4 — observability: the signals that tell an LLM service is slow, saturated, hung or wrong."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated


def _signals(ctx) -> set[str]:
    return set(s.observability(ctx).signals)


def _missing(ctx, wanted: tuple[str, ...]) -> list[str]:
    have = _signals(ctx)
    return [w for w in wanted if w not in have]


@check("OBS-001", "observability", "critical", "Engine metrics are scraped",
       rationale="""Without the engine's own metrics (TTFT, ITL, queue, KV cache) an LLM service is a black box:
       CPU and HTTP metrics can't tell a saturated KV cache from a hung engine.""",
       remediation="""Scrape the engine's /metrics (vLLM, TGI, SGLang, TRT-LLM) and set
       observability.engine_metrics: true.""",
       path="observability.engine_metrics")
def engine_metrics(ctx):
    if not s.observability(ctx).engine_metrics:
        return violated("engine metrics are not collected")
    return passed("engine metrics collected")


@check("OBS-002", "observability", "high", "TTFT and inter-token latency are measured",
       rationale="""Users feel LLM latency as time to first token and the gap between tokens; request duration
       alone hides both (a long answer looks slow, a stalled stream looks fine).""",
       remediation="Collect the canonical signals ttft and itl (observability.signals).",
       path="observability.signals")
def latency_signals(ctx):
    missing = _missing(ctx, ("ttft", "itl"))
    if missing:
        return violated(f"missing latency signals: {', '.join(missing)}", missing=missing)
    return passed("TTFT and ITL collected")


@check("OBS-003", "observability", "high", "Saturation is measured: KV-cache usage and queue depth",
       rationale="""LLM engines saturate on KV-cache memory, not CPU; the first sign of overload is a full KV
       cache, a growing waiting queue and preemptions.""",
       remediation="Collect kv_cache_usage, requests_waiting and preemptions (observability.signals).",
       path="observability.signals")
def saturation_signals(ctx):
    missing = _missing(ctx, ("kv_cache_usage", "requests_waiting", "preemptions"))
    if missing:
        return violated(f"missing saturation signals: {', '.join(missing)}", missing=missing)
    return passed("KV-cache usage, queue and preemptions collected")


@check("OBS-004", "observability", "medium", "Prefix-cache hit ratio is measured where prefix caching is on",
       rationale="""Prefix caching's savings depend on the hit ratio; a prompt-template change can silently drop
       it to zero and double prefill cost.""",
       remediation="Collect prefix_cache_hit_ratio (observability.signals) and alert on a drop.",
       path="observability.signals")
def prefix_cache_signal(ctx):
    if not ctx.d.engine.args.enable_prefix_caching:
        return not_applicable("prefix caching is off")
    if _missing(ctx, ("prefix_cache_hit_ratio",)):
        return violated("prefix caching on, hit ratio not collected")
    return passed("prefix-cache hit ratio collected")


@check("OBS-005", "observability", "high", "Speculative decoding's acceptance rate is monitored",
       rationale="""Speculative decoding only pays while drafts are accepted; when traffic shifts, acceptance
       collapses and every step does extra work for nothing — slower than no speculation at all.""",
       remediation="""Collect spec_acceptance_rate (observability.signals) and alert when it falls below the
       break-even rate.""",
       path="engine.args.speculative_config")
def spec_acceptance(ctx):
    if ctx.d.engine.args.speculative_config is None:
        return not_applicable("no speculative decoding")
    if _missing(ctx, ("spec_acceptance_rate",)):
        return violated("speculative decoding without acceptance-rate monitoring",
                        method=ctx.d.engine.args.speculative_config.method)
    return passed("acceptance rate collected")


@check("OBS-006", "observability", "high", "GPU health is monitored (utilization, memory, XID, ECC)",
       rationale="""XID errors, ECC faults and thermal throttling degrade or kill replicas; engine metrics don't
       show them until requests fail.""",
       remediation="""Run dcgm-exporter (or an NVML collector exporting the same DCGM names), and set
       observability.gpu_metrics.""",
       path="observability.gpu_metrics")
def gpu_metrics(ctx):
    if ctx.d.hardware.gpu == "CPU":
        return not_applicable("CPU deployment")
    gm = s.observability(ctx).gpu_metrics
    if gm == "none":
        return violated("no GPU metrics collected")
    return passed(f"GPU metrics from {gm}")


@check("OBS-007", "observability", "high", "Every alert links to a runbook",
       rationale="""An alert without a runbook pages a person who then has to work out what it means at 3 a.m.;
       monitoring-mixins convention is a runbook_url on every alert.""",
       remediation="""Give every alert a runbook_url (observability.alerts[].runbook_url) or a matching page in
       operations.runbooks.""",
       path="observability.alerts")
def alerts_have_runbooks(ctx):
    alerts = s.observability(ctx).alerts
    if not alerts:
        return not_applicable("no alerts (see OBS-008)")
    runbooks = " ".join(s.operations(ctx).runbooks).lower()
    orphans = []
    for a in alerts:
        name = a if isinstance(a, str) else a.name
        url = None if isinstance(a, str) else a.runbook_url
        if not url and name.lower() not in runbooks:
            orphans.append(name)
    if orphans:
        return violated(f"{len(orphans)} of {len(alerts)} alert(s) without a runbook: {', '.join(orphans)}",
                        alerts_without_runbook=orphans)
    return passed(f"all {len(alerts)} alerts have runbooks")


@check("OBS-008", "observability", "high", "Alerts cover engine down, hung engine and SLO burn",
       rationale="""Without alerts, metrics are only read after a user complains. The minimum for LLM serving:
       engine down, engine hung (no tokens while requests run), and SLO burn-rate alerts.""",
       remediation="""Add alerts for engine down, engine hung (no token progress while requests run) and SLO burn rates, and list them in observability.alerts.""",
       path="observability.alerts")
def alerts_exist(ctx):
    alerts = s.observability(ctx).alerts
    if not alerts:
        return violated("no alerts declared")
    names = " ".join((a if isinstance(a, str) else a.name).lower() for a in alerts)
    wanted = {"engine down": ("down",), "hung engine": ("hung", "stall", "progress"), "SLO burn": ("burn", "slo")}
    missing = [k for k, words in wanted.items() if not any(w in names for w in words)]
    if missing:
        return violated(f"no alert for: {', '.join(missing)}", warn=True, missing=missing)
    return passed(f"{len(alerts)} alerts incl. down, hung and SLO burn")


@check("OBS-009", "observability", "medium", "Dashboards exist for the service",
       rationale="""During an incident nobody writes PromQL; the on-call needs golden signals, saturation and GPU
       health on one screen.""",
       remediation="Build dashboards for golden signals, saturation (KV cache, queue) and GPU health; list them in observability.dashboards.",
       path="observability.dashboards")
def dashboards(ctx):
    if not s.observability(ctx).dashboards:
        return violated("no dashboards declared", warn=True)
    return passed(f"{len(s.observability(ctx).dashboards)} dashboard(s)")


@check("OBS-010", "observability", "low", "Requests are traced",
       rationale="""Traces (gateway → engine, with queue and prefill spans) explain single slow requests that
       percentiles average away.""",
       remediation="Enable OpenTelemetry tracing (vLLM --otlp-traces-endpoint) and set observability.tracing: true.",
       path="observability.tracing")
def tracing(ctx):
    if not s.observability(ctx).tracing:
        return violated("no request tracing", warn=True)
    return passed("tracing enabled")


@check("OBS-011", "observability", "medium", "Declared signals are known to the catalog",
       rationale="""A signal name the catalog doesn't know maps to no engine metric: dashboards and alerts built
       on it stay empty.""",
       remediation="Use the signal names `forge catalog list` shows in observability.signals.",
       path="observability.signals")
def known_signals(ctx):
    from forge.signal_index import signal_aliases

    known = signal_aliases()
    unknown = sorted(sig for sig in _signals(ctx) if sig not in known)
    if not _signals(ctx):
        return not_applicable("no signals declared (see OBS-002, OBS-003)")
    if unknown:
        return violated(f"unknown signal(s): {', '.join(unknown)}", warn=True, unknown=unknown)
    return passed("all declared signals are in the catalog")
