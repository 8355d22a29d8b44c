"""Dimension 6 — cost & efficiency at 1×/3×/10× traffic: metered, right-sized, using the cheap wins."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated

IDLE_WASTE_THRESHOLD = 0.5   # more than half the provisioned GPU-hours idle over a day is waste
PREFIX_HIT_WORTH_IT = 0.2    # above this expected hit rate, prefix caching pays for itself
# Spot that saves less than this after interruptions is not worth its reclaims (lost streams, re-warms, pages).
SPOT_MIN_NET_SAVINGS = 0.10
# Reclaims that would spend more than this share of the availability error budget make spot-only prod a risk.
SPOT_ERROR_BUDGET_SHARE = 0.10


def delta(ctx, changes: dict, multiplier: float = 1.0) -> tuple[float | None, str]:
    """What a recommended change saves or costs per month, re-planned by the capacity model, and its wording."""
    from forge.readiness.capacity import cost_delta, describe_delta

    usd = cost_delta(ctx.d, ctx.base_dir, ctx.capacity, changes, multiplier)
    return (None if usd is None else round(usd)), describe_delta(usd)


def _with_delta(message: str, wording: str, change: str) -> str:
    return f"{message}; {change} {wording}" if wording else message


@check("COST-001", "cost", "high", "GPU spend is metered per team and cost center",
       rationale="""On shared GPU infrastructure, spend nobody can attribute is spend nobody reduces; chargeback
       needs owner labels on every series.""",
       remediation="Set metadata.team and metadata.cost_center (exported as labels on every Forge metric).",
       path="metadata")
def metering(ctx):
    missing = [k for k in ("team", "cost_center") if not getattr(ctx.d.metadata, k)]
    if missing:
        return violated(f"no chargeback labels: {', '.join('metadata.' + m for m in missing)}", missing=missing)
    return passed(f"metered to {ctx.d.metadata.team} / {ctx.d.metadata.cost_center}")


@check("COST-002", "cost", "medium", "Replicas are not sized on peak",
       rationale="""Holding peak capacity all day when the median is a fraction of it leaves most GPU-hours idle.
       The floor should carry p95 traffic plus burst and one spare (REL-005) and no more; autoscaling covers
       the peak.""",
       remediation="""Lower hardware.replicas.min to the capacity model's replicas_with_headroom and autoscale up
       to the peak figure (hardware.replicas.max).""",
       path="hardware.replicas.min")
def not_sized_on_peak(ctx):
    point = s.growth(ctx, 1.0)
    replicas = ctx.d.hardware.replicas
    if point is None or replicas is None or point.replicas_with_headroom is None:
        return not_applicable("needs replicas, traffic, SLO and the capacity model")
    provisioned = replicas.min * ctx.d.hardware.gpus_per_replica * 24
    idle = point.idle_gpu_hours_per_day or 0.0
    ratio = idle / provisioned if provisioned else 0.0
    excess = replicas.min - point.replicas_with_headroom
    ev = {"replicas_min": replicas.min, "replicas_with_headroom": point.replicas_with_headroom,
          "idle_gpu_hours_per_day": round(idle, 1), "provisioned_gpu_hours_per_day": provisioned,
          "idle_ratio": round(ratio, 2)}
    if excess <= 0:
        # Idle time below the p95 + burst + N+1 floor is the price of reliability, not waste.
        return passed(f"floor of {replicas.min} is what p95 with headroom needs ({ratio:.0%} idle GPU-hours)", **ev)
    msg = (f"replicas.min {replicas.min} is {excess} above the {point.replicas_with_headroom} that p95 with burst "
           f"and N+1 headroom needs; {ratio:.0%} of the floor's GPU-hours are idle over a day")
    usd, wording = delta(ctx, {"hardware.replicas.min": point.replicas_with_headroom})
    msg = _with_delta(msg, wording, f"replicas.min {point.replicas_with_headroom}")
    return violated(msg, warn=ratio <= IDLE_WASTE_THRESHOLD, cost_delta_usd_month=usd, **ev)


@check("COST-003", "cost", "medium", "Prefix caching is on where traffic shares prefixes",
       rationale="""System prompts, few-shot examples and multi-turn history repeat across requests; prefix
       caching skips their prefill. With a high expected hit rate, leaving it off pays for the same prefill
       again and again (and raises TTFT).""",
       remediation="Set engine.args.enable_prefix_caching: true (vLLM V1 enables it by default).",
       path="engine.args.enable_prefix_caching")
def prefix_caching(ctx):
    rate = s.traffic(ctx).prefix_cache_hit_rate
    if rate is None or rate < PREFIX_HIT_WORTH_IT:
        return not_applicable("little shared prefix expected")
    if ctx.d.engine.args.enable_prefix_caching is False:
        usd, wording = delta(ctx, {"engine.args.enable_prefix_caching": True})
        return violated(_with_delta(f"prefix caching off while {rate:.0%} of prompt tokens are expected to hit",
                                    wording, "turning it on"), prefix_cache_hit_rate=rate, cost_delta_usd_month=usd)
    return passed("prefix caching on", prefix_cache_hit_rate=rate)


@check("COST-004", "cost", "medium", "10× traffic stays within budget",
       rationale="""Growth multiplies GPU spend; if 10× traffic costs more than the budget allows, the time to
       find out is before the launch, not on the invoice.""",
       remediation="""Set metadata.labels.budget_usd_month and review the 10× cost: quantize, enable prefix
       caching, or negotiate reserved capacity.""",
       path="metadata.labels")
def budget(ctx):
    budget = ctx.d.metadata.labels.get("budget_usd_month")
    point = s.growth(ctx, 10.0)
    if budget is None:
        return violated("no budget declared (metadata.labels.budget_usd_month)", warn=True)
    try:
        limit = float(budget)
    except ValueError:
        return violated(f"budget_usd_month '{budget}' is not a number", warn=True)
    if point is None or point.cost_per_hour is None:
        return not_applicable("needs traffic, SLO and the capacity model")
    monthly = point.cost_per_hour * 730
    ev = {"cost_usd_month_10x": round(monthly), "budget_usd_month": limit}
    if monthly > limit:
        message = f"10× traffic costs ${monthly:,.0f}/month, over the ${limit:,.0f} budget"
        options = _cheaper_options(ctx)
        if options:
            best_change, (usd, wording) = min(options.items(), key=lambda item: item[1][0])
            message = _with_delta(message, wording + " at 10×", best_change)
            ev["cost_delta_usd_month_10x"] = usd
        return violated(message, warn=True, **ev)
    return passed(f"10× traffic ${monthly:,.0f}/month within budget", **ev)


def _cheaper_options(ctx) -> dict[str, tuple[float, str]]:
    """Recommendations the model can price at 10×: FP8 KV cache, FP8 weights, prefix caching (those that apply)."""
    from forge.hardware import get

    gpu = get(ctx.d.hardware.gpu)
    candidates = {}
    if gpu.supports("fp8") and gpu.id != "CPU" and not ctx.d.engine.args.kv_cache_dtype.startswith("fp8"):
        candidates["kv_cache_dtype fp8"] = {"engine.args.kv_cache_dtype": "fp8"}
    if gpu.supports("fp8") and gpu.id != "CPU" and ctx.capacity.weights_dtype in ("bf16", "fp16"):
        candidates["FP8 weights"] = {"model.weights.dtype": "fp8", "model.weights.quantization": "fp8"}
    if ctx.d.engine.args.enable_prefix_caching is False and (s.traffic(ctx).prefix_cache_hit_rate or 0) > 0:
        candidates["prefix caching"] = {"engine.args.enable_prefix_caching": True}
    out = {}
    for name, changes in candidates.items():
        usd, wording = delta(ctx, changes, 10.0)
        if usd is not None and usd < 0:
            out[name] = (usd, wording)
    return out


@check("COST-005", "cost", "medium", "Autoscaling follows traffic",
       rationale="""A fixed replica count (min == max) pays for peak all day or misses the peak; LLM traffic is
       diurnal.""",
       remediation="Give hardware.replicas a range (min for p95 + headroom, max for peak × growth).",
       path="hardware.replicas")
def autoscaling(ctx):
    replicas = ctx.d.hardware.replicas
    rps = s.traffic(ctx).requests_per_second
    if replicas is None:
        return violated("no replica range declared", "hardware")
    if replicas.min == replicas.max and rps is not None and rps.peak > 2 * max(rps.p50, 1e-9):
        return violated(f"fixed at {replicas.min} replicas while peak is {rps.peak / max(rps.p50, 1e-9):.1f}× the "
                        "median", warn=True, replicas=replicas.min)
    return passed(f"replicas {replicas.min}–{replicas.max}")


@check("COST-006", "cost", "low", "KV cache uses FP8 on GPUs that support it",
       rationale="""An FP8 KV cache halves KV bytes per token: twice the concurrent sequences per GPU for a small,
       measurable accuracy cost (run an eval).""",
       remediation="Set engine.args.kv_cache_dtype: fp8 and cover it in correctness.eval.",
       path="engine.args.kv_cache_dtype")
def fp8_kv(ctx):
    from forge.hardware import get

    gpu = get(ctx.d.hardware.gpu)
    if not gpu.supports("fp8") or ctx.d.hardware.gpu == "CPU":
        return not_applicable(f"{gpu.id} has no FP8")
    if not ctx.d.engine.args.kv_cache_dtype.startswith("fp8"):
        usd, wording = delta(ctx, {"engine.args.kv_cache_dtype": "fp8"})
        return violated(_with_delta(f"{gpu.id} supports FP8 but the KV cache is {ctx.d.engine.args.kv_cache_dtype}",
                                    wording, "kv_cache_dtype fp8"), warn=True, cost_delta_usd_month=usd)
    return passed("FP8 KV cache")


@check("COST-007", "cost", "medium", "Spot savings survive interruptions",
       rationale="""Spot is cheap until reclaims force re-prefill of interrupted requests and cold starts of
       replacement replicas; prod on spot-only has no floor when a zone is reclaimed.""",
       remediation="""Keep the N+1 floor on on-demand or reserved capacity and put only burst capacity on spot,
       with a drain agent (REL-001).""",
       path="hardware.capacity")
def spot_floor(ctx):
    if ctx.d.hardware.capacity != "spot":
        return not_applicable("not on spot")
    econ = ctx.capacity.spot if ctx.capacity is not None else None
    if econ is None:
        # No traffic or SLO to price the fleet with: judge the floor alone.
        if s.is_prod(ctx):
            return violated("production floor on spot capacity only", warn=True, capacity="spot",
                            environment=ctx.d.metadata.environment)
        return passed("spot used outside production")
    month = 730
    ev = {"on_demand_usd_month": round(econ.on_demand_cost_per_hour * month),
          "spot_effective_usd_month": round(econ.spot_effective_cost_per_hour * month),
          "net_savings_fraction": round(econ.net_savings_fraction, 3),
          "lost_requests_per_day": round(econ.lost_requests_per_day, 2),
          "interruptions_per_replica_hour": econ.interruptions_per_replica_hour,
          "spot_effective_usd_per_1m_output_tokens": econ.spot_effective_cost_per_million_output_tokens,
          "on_demand_usd_per_1m_output_tokens": econ.on_demand_cost_per_million_output_tokens}
    summary = (f"spot ${econ.spot_effective_cost_per_hour * month:,.0f}/month after interruptions (an extra spare, "
               f"{econ.rewarm_seconds:.0f} s re-warms, redone work) vs ${econ.on_demand_cost_per_hour * month:,.0f} "
               f"on-demand: {econ.net_savings_fraction:.0%} net savings")
    if econ.net_savings_fraction < SPOT_MIN_NET_SAVINGS:
        usd = round((econ.on_demand_cost_per_hour - econ.spot_effective_cost_per_hour) * month)
        return violated(f"interruptions cancel the spot savings: {summary}; on-demand {describe_delta_usd(usd)}",
                        cost_delta_usd_month=usd, **ev)
    if s.is_prod(ctx):
        budget = econ.error_budget_requests_per_day
        share = econ.lost_requests_per_day / budget if budget else None
        floor_usd = round((econ.on_demand_floor_cost_per_hour - econ.spot_effective_cost_per_hour) * month)
        ev["cost_delta_usd_month"] = floor_usd
        lost = f"{econ.lost_requests_per_day:.1f} requests/day lost to reclaims"
        if share is not None:
            lost += f" ({share:.1%} of the error budget)"
        # Reclaims eating a real share of the error budget are an outage pattern, not a cost trade-off.
        return violated(f"production floor on spot capacity only: {summary}; {lost}; an on-demand floor with spot "
                        f"above it {describe_delta_usd(floor_usd)}",
                        warn=share is None or share <= SPOT_ERROR_BUDGET_SHARE, capacity="spot",
                        environment=ctx.d.metadata.environment, **ev)
    return passed(f"spot used outside production: {summary}", **ev)


def describe_delta_usd(usd: float) -> str:
    from forge.readiness.capacity import describe_delta

    return describe_delta(usd)
