"""Dimension 3 — reliability & failure modes: survives a lost GPU, a hung collective, a spot reclaim, a drain."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated

# The game days Forge runs (chaos/); each maps to a failure mode LLM serving is known for.
REQUIRED_EXPERIMENTS = ("gpu-fault", "nccl-hang", "spot-interruption", "bad-canary")
# Which failure mode a drill journal (evidence.chaos_journals, by its kind tag) rehearses. A frozen engine is what a
# stopped tensor-parallel worker does to vLLM: the engine-hang drill exercises the same detection and restart path.
JOURNAL_REHEARSES = {"gpu-fault": "gpu-fault", "engine-hang": "nccl-hang", "collective-hang": "nccl-hang",
                     "spot-interruption": "spot-interruption", "bad-canary": "bad-canary"}


@check("REL-001", "reliability", "critical", "Spot capacity has drain, checkpoint and resume",
       rationale="""Spot GPUs are reclaimed with 30 s (GCP) to 2 min (AWS) notice. Without a drain agent that
       stops new traffic and lets in-flight streams finish, every reclaim drops user requests mid-stream.""",
       remediation="""Run a drain agent on the interruption notice (reliability.spot_drain {enabled: true,
       notice_source}), keep on-demand capacity for the N+1 floor, and set checkpoint_resume for long jobs.""",
       path="reliability.spot_drain")
def spot_drain(ctx):
    if ctx.d.hardware.capacity != "spot":
        return not_applicable("not on spot capacity")
    rel = s.reliability(ctx)
    if not rel.spot_drain_enabled:
        return violated("spot capacity without a drain on interruption notice", capacity="spot")
    sd = rel.spot_drain
    if not isinstance(sd, bool) and not sd.checkpoint_resume:
        return violated("spot drain declared, but no checkpoint/resume for requests caught by the reclaim",
                        warn=True, capacity="spot")
    return passed("spot drain declared")


@check("REL-002", "reliability", "high", "The engine drains in-flight requests on shutdown",
       rationale="""vLLM's default --shutdown-timeout is 0: on SIGTERM in-flight streams die with an error event
       (measured on vLLM 0.32). Every rollout and scale-in then loses work.""",
       remediation="""Set engine.args.shutdown_timeout to cover the longest request (p95 output tokens × ITL),
       e.g. 60 s, and keep it below termination_grace_period_seconds.""",
       path="engine.args.shutdown_timeout")
def shutdown_timeout_set(ctx):
    st = ctx.d.engine.args.shutdown_timeout
    if st is None or st == 0:
        return violated("shutdown_timeout is unset or 0: SIGTERM kills in-flight streams", shutdown_timeout=st)
    return passed(f"shutdown_timeout {st:g}s", shutdown_timeout=st)


@check("REL-003", "reliability", "critical", "Shutdown drain fits in the termination grace period",
       rationale="""Kubernetes sends SIGKILL when terminationGracePeriodSeconds runs out. A shutdown_timeout
       longer than that means the drain is cut off mid-way: requests are lost exactly when you planned not
       to lose them.""",
       remediation="""Set reliability.termination_grace_period_seconds above engine.args.shutdown_timeout plus
       the pre-stop delay (e.g. shutdown_timeout + 15 s).""",
       path="reliability.termination_grace_period_seconds")
def drain_fits_grace(ctx):
    st = ctx.d.engine.args.shutdown_timeout
    grace = s.reliability(ctx).termination_grace_period_seconds
    if grace is None:
        return violated("termination_grace_period_seconds not declared (Kubernetes default is 30 s)",
                        shutdown_timeout=st)
    if st is None or st == 0:
        return not_applicable("no shutdown drain configured (see REL-002)")
    ev = {"shutdown_timeout": st, "termination_grace_period_seconds": grace}
    if st >= grace:
        return violated(f"shutdown_timeout {st:g}s ≥ grace period {grace:g}s: SIGKILL cuts the drain", **ev)
    return passed(f"drain {st:g}s fits in grace {grace:g}s", **ev)


@check("REL-004", "reliability", "high", "A progress watchdog backs the liveness probe",
       rationale="""A hung collective (NCCL, or vLLM's shared-memory broadcast on CPU) keeps /health at 200 for
       minutes while no token is produced (measured: 100+ s on vLLM 0.32; vLLM itself waits 300 s). A liveness
       probe on /health alone never restarts it.""",
       remediation="""Enable a progress watchdog (requests running while generation-token counters don't move
       for stall_seconds → mark down and restart): reliability.liveness.progress_watchdog {enabled: true,
       stall_seconds: 30}.""",
       path="reliability.liveness")
def progress_watchdog(ctx):
    liveness = s.reliability(ctx).liveness
    tp = ctx.d.engine.args.tensor_parallel_size * ctx.d.engine.args.pipeline_parallel_size
    if liveness is None or not liveness.http_path:
        return violated("no liveness probe declared", tensor_parallel_size=tp)
    if not liveness.watchdog_enabled:
        why = " with tensor parallelism (collective hangs)" if tp > 1 else ""
        return violated(f"liveness is {liveness.http_path} only{why}: a hung engine stays 'healthy'",
                        liveness_path=liveness.http_path, tensor_parallel_size=tp)
    return passed("progress watchdog enabled", liveness_path=liveness.http_path)


@check("REL-005", "reliability", "high", "Replicas leave N+1 failure and burst headroom at p95",
       rationale="""Sizing for the average (or sizing the minimum on today's peak with nothing spare) means
       one lost GPU or one burst puts the whole service out of SLO. The floor must carry p95 traffic with
       one replica down, plus burst headroom.""",
       remediation="""Set hardware.replicas.min to the capacity model's replicas_with_headroom (p95 + burst +
       one spare), and let autoscaling add the rest.""",
       path="hardware.replicas.min")
def n_plus_one(ctx):
    replicas = ctx.d.hardware.replicas
    if replicas is None:
        return violated("hardware.replicas not declared", "hardware")
    if replicas.min < 2:
        return violated(f"replicas.min is {replicas.min}: any failure or rollout is an outage",
                        replicas_min=replicas.min)
    point = s.growth(ctx, 1.0)
    if point is None or point.replicas_with_headroom is None:
        return passed(f"replicas.min {replicas.min} (capacity model can't check headroom)", replicas_min=replicas.min)
    ev = {"replicas_min": replicas.min, "replicas_needed_p95": point.replicas_needed,
          "replicas_with_headroom": point.replicas_with_headroom}
    if replicas.min < point.replicas_with_headroom:
        return violated(f"replicas.min {replicas.min} < {point.replicas_with_headroom} needed for p95 traffic "
                        "with burst and N+1 headroom", **ev)
    return passed(f"replicas.min {replicas.min} covers p95 with N+1 and burst headroom", **ev)


@check("REL-006", "reliability", "medium", "A PodDisruptionBudget protects capacity during node maintenance",
       rationale="""Node drains and cluster upgrades evict pods without a budget; losing two GPU replicas at
       once can take minutes of cold start to recover (weights load).""",
       remediation="Declare reliability.pod_disruption_budget.min_available (e.g. replicas.min - 1).",
       path="reliability.pod_disruption_budget")
def pdb(ctx):
    if s.reliability(ctx).pod_disruption_budget is None:
        return violated("no PodDisruptionBudget declared", warn=True)
    return passed("PodDisruptionBudget declared")


@check("REL-007", "reliability", "high", "A readiness probe keeps traffic off loading replicas",
       rationale="""LLM engines take from a minute (tiny models) to many minutes (70B from object storage) to
       load. Without a readiness probe the gateway sends requests to a replica that can't serve them.""",
       remediation="""Declare reliability.readiness_probe {http_path: /health} (vLLM returns 200 only once the
       engine is up) and a startup budget.""",
       path="reliability.readiness_probe")
def readiness_probe(ctx):
    if s.reliability(ctx).readiness_probe is None:
        return violated("no readiness probe declared")
    return passed("readiness probe declared")


@check("REL-008", "reliability", "medium", "Failure modes are rehearsed in game days",
       rationale="""GPU faults, collective hangs, spot reclaims and bad canaries are the common ways LLM serving
       fails; a recovery path that has never run does not work.""",
       remediation=f"""Rehearse the game days ({', '.join(REQUIRED_EXPERIMENTS)}) and list them in
       reliability.chaos_experiments with last_run and passed.""",
       path="reliability.chaos_experiments")
def chaos_rehearsed(ctx):
    from forge.readiness.evidence_chaos import concluded

    rel = s.reliability(ctx)
    claimed = rel.chaos_names
    journals = ctx.chaos_evidence
    drilled: dict[str, list[dict]] = {}  # failure mode -> the deciding journal of each drill kind that rehearses it
    for kind, mode in JOURNAL_REHEARSES.items():
        latest = journals.latest(kind)
        if latest is not None and concluded(latest):
            drilled.setdefault(mode, []).append(latest)
    drilled_ok = {mode for mode, found in drilled.items() if any(j["passed"] for j in found)}
    drilled_failed = sorted(mode for mode in drilled if mode not in drilled_ok)
    names = list(dict.fromkeys([*claimed, *sorted(drilled_ok)]))
    missing = [e for e in REQUIRED_EXPERIMENTS if e not in names]
    if ctx.d.hardware.capacity != "spot" and "spot-interruption" in missing:
        missing.remove("spot-interruption")
    failed = [c.name for c in rel.chaos_experiments if not isinstance(c, str) and c.passed is False
              and c.name not in drilled_ok]
    evidence = {"rehearsed": names, "journaled": sorted(drilled_ok)}
    if drilled_failed:
        evidence["journal_failed"] = drilled_failed
    if failed or drilled_failed:
        outcome = violated(f"game day(s) failed and not re-run: {', '.join([*failed, *drilled_failed])}",
                           failed=[*failed, *drilled_failed], **evidence)
    elif missing:
        outcome = violated(f"not rehearsed: {', '.join(missing)}", warn=True, missing=missing, **evidence)
    else:
        outcome = passed(f"rehearsed: {', '.join(names)}", **evidence)
    if drilled:
        outcome.basis = "evidence"
    return outcome


@check("REL-009", "reliability", "medium", "Requests have a timeout and bounded retries",
       rationale="""A stuck stream without a client or gateway timeout holds a connection and a KV slot
       forever; unbounded retries turn an overload into a retry storm.""",
       remediation="""Set reliability.request_timeout_seconds (above the p95 end-to-end latency) and
       reliability.retries (0–2, only on connect errors / 503).""",
       path="reliability.request_timeout_seconds")
def timeouts(ctx):
    rel = s.reliability(ctx)
    if rel.request_timeout_seconds is None:
        return violated("no request timeout declared", warn=True)
    if rel.retries is not None and rel.retries > 3:
        return violated(f"{rel.retries} retries amplify overload", "reliability.retries", warn=True, retries=rel.retries)
    slo = s.slo(ctx)
    if slo.e2e_p95_seconds and rel.request_timeout_seconds < slo.e2e_p95_seconds:
        return violated(f"timeout {rel.request_timeout_seconds:g}s is below the e2e p95 SLO "
                        f"{slo.e2e_p95_seconds:g}s: healthy requests get cut", warn=True)
    return passed(f"timeout {rel.request_timeout_seconds:g}s")


@check("REL-010", "reliability", "high", "Failure modes are written down",
       rationale="""The team must know how this deployment fails (OOM at long context, hung collective, XID,
       KV exhaustion, bad weights push) to have detection and response for each.""",
       remediation="List the known failure modes and their detection in reliability.failure_modes.",
       path="reliability.failure_modes")
def failure_modes(ctx):
    fm = s.reliability(ctx).failure_modes
    if not fm:
        return violated("no failure modes listed")
    if len(fm) < 3:
        return violated(f"only {len(fm)} failure mode(s) listed", warn=True, failure_modes=fm)
    return passed(f"{len(fm)} failure modes listed", failure_modes=fm)
