"""Dimension 5 — deployment & rollback: a bad release is undone automatically, in under 5 minutes."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated

ROLLBACK_BUDGET_SECONDS = 300  # the framework's "rollback < 5 min"


@check("DEP-001", "deployment", "critical", "Rollback is automated",
       rationale="""A bad model or engine release (quality regression, latency cliff, crash loop) must be rolled
       back by the pipeline, not by a person who first has to be paged and then find the previous version.""",
       remediation="""Use a canary or blue-green rollout with analysis (Argo Rollouts, Flagger) and set
       rollout.automated_rollback: true.""",
       path="rollout.automated_rollback")
def automated_rollback(ctx):
    if not s.rollout(ctx).automated_rollback:
        return violated("rollback is manual")
    return passed("automated rollback")


@check("DEP-002", "deployment", "high", "Rollback completes in under 5 minutes",
       rationale="""Every minute of a bad release burns error budget; the framework's bar is a rollback under
       5 minutes, measured, including the time to detect.""",
       remediation="""Measure the rollback (a bad-canary game day) and record rollout.rollback_seconds;
       keep previous weights warm (node cache) so rolling back needs no reload.""",
       path="rollout.rollback_seconds")
def rollback_fast(ctx):
    ro = s.rollout(ctx)
    if ro.rollback_seconds is None:
        return violated("rollback time unknown (rollout.rollback_seconds)", warn=True)
    ev = {"rollback_seconds": ro.rollback_seconds, "budget_seconds": ROLLBACK_BUDGET_SECONDS}
    if ro.rollback_seconds > ROLLBACK_BUDGET_SECONDS:
        return violated(f"rollback takes {ro.rollback_seconds:g}s, over the {ROLLBACK_BUDGET_SECONDS}s budget", **ev)
    return passed(f"rollback in {ro.rollback_seconds:g}s", **ev)


@check("DEP-003", "deployment", "high", "Weights are not delivered inside container images",
       rationale="""Baking tens of GB of weights into an image makes every cold start and every scale-out pull
       the whole image through the registry: minutes per node and a registry bandwidth cliff when a fleet
       scales at once.""",
       remediation="""Ship weights separately: a node-local cache, a pre-populated volume, or streamed from
       object storage (model.weights.delivery).""",
       path="model.weights.delivery")
def weights_delivery(ctx):
    w = ctx.d.model.weights
    if w is None or w.delivery is None:
        return violated("weights delivery not declared", "model.weights", warn=True)
    arch = ctx.d.model.architecture
    if w.delivery == "image":
        size = f" (~{arch.params_billion:g}B parameters)" if arch else ""
        return violated(f"weights baked into the container image{size}", delivery=w.delivery)
    return passed(f"weights delivered via {w.delivery}", delivery=w.delivery)


@check("DEP-004", "deployment", "medium", "Releases roll out progressively",
       rationale="""`recreate` takes the service down for a full model load; a rolling update without analysis
       spreads a bad release to every replica before anyone looks.""",
       remediation="Use rollout.strategy canary (with canary_steps) or blue-green.",
       path="rollout.strategy")
def progressive(ctx):
    ro = s.rollout(ctx)
    if ro.strategy is None:
        return violated("no rollout strategy declared")
    if ro.strategy == "recreate":
        return violated("recreate strategy: downtime for a full model load on every release", strategy=ro.strategy)
    if ro.strategy == "rolling":
        return violated("rolling update without traffic-weighted analysis", warn=True, strategy=ro.strategy)
    return passed(f"{ro.strategy} rollout", strategy=ro.strategy)


@check("DEP-005", "deployment", "high", "Canary analysis detects a bad release within the rollback budget",
       rationale="""Automatic rollback is only as fast as its analysis: time to abort ≈ interval × failure_limit.
       Analysis on HTTP errors alone misses LLM regressions (TTFT, ITL, output quality).""",
       remediation="""Add rollout.analysis with LLM metrics (ttft, itl, error ratio), an interval and failure
       limit whose product stays well under 300 s.""",
       path="rollout.analysis")
def analysis(ctx):
    ro = s.rollout(ctx)
    if ro.strategy not in ("canary", "blue-green"):
        return not_applicable("no canary or blue-green rollout")
    a = ro.analysis
    if a is None:
        return violated(f"{ro.strategy} without automated analysis")
    detect = a.interval_seconds * max(a.failure_limit, 1)
    ev = {"interval_seconds": a.interval_seconds, "failure_limit": a.failure_limit, "detect_seconds": detect}
    if detect > ROLLBACK_BUDGET_SECONDS:
        return violated(f"analysis needs ~{detect:g}s to abort, over the {ROLLBACK_BUDGET_SECONDS}s budget", **ev)
    llm = {"ttft", "itl", "e2e_latency", "error_ratio", "eval"}
    if not llm & set(a.metrics):
        return violated("analysis checks no LLM signal (ttft, itl, error_ratio)", "rollout.analysis.metrics",
                        warn=True, metrics=a.metrics, **ev)
    return passed(f"aborts within ~{detect:g}s on {', '.join(a.metrics)}", **ev)


@check("DEP-006", "deployment", "medium", "Engine and weights are pinned",
       rationale="""An unpinned engine version or weights reference changes behaviour between two deploys of
       the same config — and makes rollback restore something different.""",
       remediation="Pin engine.version and model.weights.sha256.",
       path="engine.version")
def pinned(ctx):
    missing = []
    if not ctx.d.engine.version or ctx.d.engine.version in ("latest", "main", "nightly"):
        missing.append("engine.version")
    if ctx.d.model.weights is None or ctx.d.model.weights.sha256 is None:
        missing.append("model.weights.sha256")
    if missing:
        return violated(f"not pinned: {', '.join(missing)}", missing[0], warn=True, missing=missing)
    return passed(f"engine {ctx.d.engine.version} and weights digest pinned")


@check("DEP-007", "deployment", "medium", "Cold start is known and bounded",
       rationale="""Scale-out and recovery are limited by how long a replica takes from scheduling to ready
       (image pull, weights load, CUDA graph capture). Unknown cold start means unknown recovery time.""",
       remediation="""Measure start-up to ready and record reliability.startup_seconds; keep it under the
       rollback budget (node-cached weights, smaller images).""",
       path="reliability.startup_seconds")
def cold_start(ctx):
    start = s.reliability(ctx).startup_seconds
    if start is None:
        return violated("start-up time not measured", warn=True)
    if start > ROLLBACK_BUDGET_SECONDS:
        return violated(f"cold start {start:g}s exceeds {ROLLBACK_BUDGET_SECONDS}s: recovery and scale-out are slow",
                        warn=True, startup_seconds=start)
    return passed(f"cold start {start:g}s", startup_seconds=start)
