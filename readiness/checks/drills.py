"""Game-day drills as evidence (dimensions 3, 5 and 8): what the chaos journals measured, against what deploy.yaml
claims.

Each check reads the newest journal of its drill kind from evidence.chaos_journals (forge.readiness.evidence_chaos).
Evidence beats a claim: a journal that contradicts the YAML (a watchdog that did not catch the hang, a rollback
slower than `rollout.rollback_seconds`) fails and says which claim it contradicts. Without a journal a check falls
back to the claim and warns that nothing was measured — except DEP-008 in production, where a rollback that was
neither drilled nor claimed is a fail: "rollback never tested".
"""

from __future__ import annotations

from typing import Any

from forge.readiness.checks import _sections as s
from forge.readiness.checks.deployment import ROLLBACK_BUDGET_SECONDS
from forge.readiness.checks.operations import GAME_DAY_MAX_AGE_DAYS
from forge.readiness.evidence_chaos import age_days, brief, concluded, outcome_text, passed as drill_passed
from forge.readiness.registry import Outcome, check, not_applicable, passed, violated

HANG_DETECTION_BUDGET_SECONDS = 30  # the framework's "hang detected ≤ 30 s"
# A claimed rollback time is contradicted when the drill measured more than this multiple of it.
CLAIM_TOLERANCE = 1.25
# Interruption notice per provider: AWS EC2 Spot gives a two-minute notice ("Spot Instance interruption notices",
# AWS EC2 User Guide); GCE sends a preemption notice 30 s before stopping a Spot/preemptible VM ("Preemption
# process", Compute Engine docs); Azure Spot VMs get at least 30 s through Scheduled Events ("Azure Spot Virtual
# Machines", Azure docs). A drain that takes longer is cut off by the reclaim.
SPOT_NOTICE_SECONDS = {"aws": 120, "gcp": 30, "azure": 30}
# Names under reliability.chaos_experiments that claim the drill of each journal kind.
CLAIM_NAMES = {"engine-hang": ("engine-hang", "nccl-hang"), "gpu-fault": ("gpu-fault",),
               "spot-interruption": ("spot-interruption",), "bad-canary": ("bad-canary",),
               "good-canary": ("good-canary",)}


def _evidence(outcome: Outcome) -> Outcome:
    outcome.basis = "evidence"
    return outcome


def _claimed_drill(ctx, kind: str) -> Any | None:
    """The reliability.chaos_experiments entry claiming this drill (a name or {name, last_run, passed}), if any."""
    return next((c for c in s.reliability(ctx).chaos_experiments
                 if (c if isinstance(c, str) else c.name) in CLAIM_NAMES[kind]), None)


def _claim_text(claim: Any) -> str:
    if isinstance(claim, str):
        return f"reliability.chaos_experiments lists {claim}"
    said = f"reliability.chaos_experiments says {claim.name}"
    if claim.passed is not None:
        said += " passed" if claim.passed else " failed"
    return said + (f" on {claim.last_run}" if claim.last_run else "")


def _unmeasured(ctx, kind: str, what: str) -> Outcome:
    """No journal of this kind: the claim is all there is."""
    claim = _claimed_drill(ctx, kind)
    said = f"{_claim_text(claim)}, but" if claim is not None else "no drill claimed and"
    return violated(f"{what} never measured: {said} no {kind} journal in evidence.chaos_journals", warn=True,
                    claimed=claim is not None)


def _stall_claim(ctx) -> float | None:
    """The progress watchdog's stall threshold deploy.yaml claims, or None when it claims no watchdog."""
    liveness = s.reliability(ctx).liveness
    if liveness is None or not liveness.watchdog_enabled:
        return None
    wd = liveness.progress_watchdog
    return float(getattr(wd, "stall_seconds", HANG_DETECTION_BUDGET_SECONDS))


@check("REL-012", "reliability", "high", f"A hung engine is detected within {HANG_DETECTION_BUDGET_SECONDS} s and "
       "replaced, measured in a drill",
       rationale="""A progress watchdog in deploy.yaml is a claim. Only a drill that freezes a replica's generation
       under load (requests running, tokens stopped, /health still 200) shows the hang is caught and the replica
       replaced; until then a hung collective can hold traffic for minutes (vLLM itself waits 300 s).""",
       remediation="""Run `forge chaos run engine-hang --journal FILE` (or your own hang drill tagged engine-hang) and
       list the journal in evidence.chaos_journals; if detection is slow or missing, fix the watchdog
       (reliability.liveness.progress_watchdog, stall_seconds ≤ 30) and run the drill again.""",
       path="reliability.liveness")
def hang_detected(ctx):
    journal = ctx.chaos_evidence.latest("engine-hang")
    stall = _stall_claim(ctx)
    if journal is None:
        return _unmeasured(ctx, "engine-hang", "hang detection")
    ev = brief(journal, ctx.as_of)
    claim = (f" — contradicts reliability.liveness.progress_watchdog (enabled, stall {stall:g} s)"
             if stall is not None else "")
    detection, recovery = journal["measurements"]["detection_seconds"], journal["measurements"]["recovery_seconds"]
    if detection is None:
        if journal["status"] in ("aborted", "interrupted"):
            return _evidence(violated(f"the hang drill did not finish ({outcome_text(journal)}): detection not "
                                      f"measured ({journal['path']})", warn=True, **ev))
        return _evidence(violated(f"hang NOT detected by the watchdog in the drill ({outcome_text(journal)}; "
                                  f"{journal['path']}){claim}", **ev))
    if detection > HANG_DETECTION_BUDGET_SECONDS:
        return _evidence(violated(f"hang detected after {detection:g} s, over the {HANG_DETECTION_BUDGET_SECONDS} s "
                                  f"budget ({journal['path']}){claim}", **ev))
    if recovery is None and not drill_passed(journal):
        return _evidence(violated(f"hang detected in {detection:g} s but the replica was not replaced "
                                  f"({outcome_text(journal)}; {journal['path']})", **ev))
    if stall is None:
        return _evidence(violated(f"the drill detected the hang in {detection:g} s, but deploy.yaml enables no "
                                  "progress watchdog: the deployment does not run what the drill measured (REL-004)",
                                  warn=True, **ev))
    if stall > HANG_DETECTION_BUDGET_SECONDS:
        drill_stall = journal["measurements"]["stall_seconds"]
        ran = f" (stall {drill_stall:g} s)" if drill_stall is not None else ""
        return _evidence(violated(f"the drill{ran} detected the hang in {detection:g} s, but the deployed watchdog "
                                  f"waits {stall:g} s (reliability.liveness.progress_watchdog.stall_seconds): in "
                                  f"production a hang is caught no sooner than that, over the "
                                  f"{HANG_DETECTION_BUDGET_SECONDS} s budget", warn=True, **ev))
    replaced = f", serving again {recovery:g} s later" if recovery is not None else ""
    return _evidence(passed(f"hang detected in {detection:g} s (≤ {HANG_DETECTION_BUDGET_SECONDS} s){replaced}, "
                            f"drilled {ev['age_days']} day(s) ago", **ev))


@check("REL-013", "reliability", "high", "A lost GPU or engine is removed and replaced, losing only in-flight requests",
       rationale="""XID and ECC faults kill the engine process (vLLM raises EngineDeadError and /health fails). The
       gateway must stop routing to the replica and a new one must take over; requests should be lost only if they
       were in flight on the dead replica, never because traffic kept going to it.""",
       remediation="""Drill a GPU fault under load (a journal tagged gpu-fault with detection_seconds,
       recovery_seconds, lost_requests and in_flight_at_fault) and list it in evidence.chaos_journals; if requests
       beyond those in flight are lost, tighten the gateway's health checks and retry connect errors.""",
       path="evidence.chaos_journals")
def gpu_fault_recovered(ctx):
    journal = ctx.chaos_evidence.latest("gpu-fault")
    if journal is None:
        return _unmeasured(ctx, "gpu-fault", "recovery from a lost GPU")
    ev = brief(journal, ctx.as_of)
    m = journal["measurements"]
    claim = _claimed_drill(ctx, "gpu-fault")
    contradicts = (f" — contradicts {_claim_text(claim)}"
                   if claim is not None and not isinstance(claim, str) and claim.passed else "")
    if not drill_passed(journal):
        return _evidence(violated(f"GPU-fault drill did not pass: {outcome_text(journal)} ({journal['path']})"
                                  f"{contradicts}", **ev))
    if m["detection_seconds"] is None or m["recovery_seconds"] is None:
        missing = [k for k in ("detection_seconds", "recovery_seconds") if m[k] is None]
        return _evidence(violated(f"the journal does not show the replica removed and replaced: "
                                  f"{', '.join(missing)} not measured ({journal['path']})", **ev))
    lost, in_flight = m["lost_requests"], m["in_flight_at_fault"]
    if lost and in_flight is not None and lost > in_flight:
        return _evidence(violated(f"{lost} requests lost, more than the {in_flight} in flight at the fault: "
                                  f"traffic kept reaching the dead replica ({journal['path']})", **ev))
    lost_text = "lost: unknown" if lost is None else f"{lost} lost" + (
        f" of {in_flight} in flight" if in_flight is not None else "")
    return _evidence(passed(f"replica removed after {m['detection_seconds']:g} s and replaced after "
                            f"{m['recovery_seconds']:g} s, {lost_text}", **ev))


@check("REL-014", "reliability", "high", "A spot reclaim drill loses no request with the drain on",
       rationale="""A drain agent in deploy.yaml is a claim; a reclaim drill under load shows whether in-flight
       streams really finish inside the notice. The same drill without the drain shows what the drain saves.""",
       remediation="""Drill a spot interruption under load with and without the drain (a journal tagged
       spot-interruption with lost_requests_with_drain, lost_requests_without_drain and drain_seconds) and list
       it in evidence.chaos_journals; fix the drain until it loses nothing within the provider's notice.""",
       path="reliability.spot_drain")
def spot_drill(ctx):
    if ctx.d.hardware.capacity != "spot":
        return not_applicable("not on spot capacity")
    journal = ctx.chaos_evidence.latest("spot-interruption")
    if journal is None:
        return _unmeasured(ctx, "spot-interruption", "requests lost to a spot reclaim")
    ev = brief(journal, ctx.as_of)
    m = journal["measurements"]
    sd = s.reliability(ctx).spot_drain
    claim = " — contradicts reliability.spot_drain (enabled)" if s.reliability(ctx).spot_drain_enabled else ""
    with_drain, without = m["lost_requests_with_drain"], m["lost_requests_without_drain"]
    if with_drain is not None and with_drain > 0:
        return _evidence(violated(f"{with_drain} request(s) lost with the drain on ({journal['path']}){claim}", **ev))
    if not drill_passed(journal):
        return _evidence(violated(f"spot drill did not pass: {outcome_text(journal)} ({journal['path']})", **ev))
    if with_drain is None:
        return _evidence(violated(f"the spot journal does not count lost_requests_with_drain ({journal['path']})",
                                  **ev))
    source = getattr(sd, "notice_source", None)
    notice = SPOT_NOTICE_SECONDS.get(source or "")
    if notice is not None and m["drain_seconds"] is not None and m["drain_seconds"] > notice:
        return _evidence(violated(f"drain took {m['drain_seconds']:g} s, longer than {source}'s {notice} s "
                                  f"interruption notice: a real reclaim cuts it off ({journal['path']})", **ev))
    saved = f" ({without} lost without it)" if without is not None else ""
    drain = f", drained in {m['drain_seconds']:g} s" if m["drain_seconds"] is not None else ""
    return _evidence(passed(f"0 requests lost with the drain{saved}{drain}", **ev))


@check("DEP-008", "deployment", "high", "A bad canary was rolled back in a drill, in under 5 minutes",
       rationale="""automated_rollback and rollback_seconds in deploy.yaml are claims. A bad-canary drill (a release
       that starts failing under traffic) measures the whole chain: analysis notices, the canary's weight goes to
       0. A good canary must still be promoted, or the analysis blocks every release.""",
       remediation="""Drill a bad canary (`forge chaos run bad-canary --journal FILE`, or your rollout tool's
       equivalent tagged bad-canary, with rollback_seconds from the canary starting to fail to weight 0) and a
       good canary, list the journals in evidence.chaos_journals and record the measured time in
       rollout.rollback_seconds.""",
       path="rollout")
def canary_drill(ctx):
    chaos = ctx.chaos_evidence
    bad, good = chaos.latest("bad-canary"), chaos.latest("good-canary")
    ro = s.rollout(ctx)
    fails: list[str] = []
    warns: list[str] = []
    ev: dict[str, Any] = {"budget_seconds": ROLLBACK_BUDGET_SECONDS}
    if bad is None:
        claim = _claimed_drill(ctx, "bad-canary")
        if claim is not None:
            warns.append(f"rollback never measured: {_claim_text(claim)}, but no bad-canary journal in "
                         "evidence.chaos_journals")
        else:
            (fails if s.is_prod(ctx) else warns).append(
                "rollback never tested: no bad-canary drill, neither journaled (evidence.chaos_journals) nor "
                "claimed (reliability.chaos_experiments)")
    else:
        ev["bad_canary"] = brief(bad, ctx.as_of)
        rollback = bad["measurements"]["rollback_seconds"]
        automated = " — contradicts rollout.automated_rollback: true" if ro.automated_rollback else ""
        if rollback is None and not concluded(bad):
            warns.append(f"the bad-canary drill did not finish ({outcome_text(bad)}; {bad['path']}): rollback not "
                         "measured")
        elif rollback is None:
            fails.append(f"the bad canary was never rolled back ({outcome_text(bad)}; {bad['path']}){automated}")
        else:
            claimed = ro.rollback_seconds
            contradiction = (f" — contradicts rollout.rollback_seconds: {claimed:g}"
                             if claimed is not None and rollback > claimed * CLAIM_TOLERANCE else "")
            if rollback > ROLLBACK_BUDGET_SECONDS:
                fails.append(f"rollback measured {rollback:g} s ({rollback / 60:.1f} min), over the "
                             f"{ROLLBACK_BUDGET_SECONDS} s budget ({bad['path']}){contradiction}")
            elif not drill_passed(bad):
                fails.append(f"bad-canary drill did not pass: {outcome_text(bad)} ({bad['path']})")
            elif contradiction:
                warns.append(f"rollback measured {rollback:g} s{contradiction}: record the measured time")
    if good is not None:
        ev["good_canary"] = brief(good, ctx.as_of)
        promoted = good["measurements"]["promoted"]
        if promoted is None:  # no explicit flag: a good canary that passed and was never rolled back was promoted
            promoted = drill_passed(good) and good["measurements"]["rollback_seconds"] is None
        if not concluded(good):
            warns.append(f"the good-canary drill did not finish ({outcome_text(good)}; {good['path']})")
        elif not promoted:
            fails.append(f"a good canary was not promoted ({outcome_text(good)}; {good['path']}): the analysis "
                         "aborts healthy releases")
    basis = "evidence" if bad is not None or good is not None else "claim"
    if fails or warns:
        outcome = violated("; ".join(fails + warns), warn=not fails, **ev)
    else:
        rollback = bad["measurements"]["rollback_seconds"] if bad is not None else None
        said = (f"bad canary rolled back in {rollback:g} s (< {ROLLBACK_BUDGET_SECONDS} s)"
                if rollback is not None else "")
        if good is not None:
            said += ("; " if said else "") + "good canary promoted"
        outcome = passed(said, **ev)
    outcome.basis = basis
    return outcome


@check("OPS-008", "operations", "medium", f"Drill journals are recent ({GAME_DAY_MAX_AGE_DAYS} days) and passed",
       rationale="""A drill proves the recovery path as it was on the day it ran; engines, gateways and runbooks
       change under it. The newest journal of each drill must have passed and be less than a quarter old.""",
       remediation=f"""Re-run the drills at least every {GAME_DAY_MAX_AGE_DAYS} days (`forge chaos run ...`), fix
       what failed, and list the new journals in evidence.chaos_journals.""",
       path="evidence.chaos_journals")
def journals_fresh(ctx):
    chaos = ctx.chaos_evidence
    if chaos.errors:
        return _evidence(violated(f"{len(chaos.errors)} chaos journal(s) unreadable: {chaos.errors[0]}",
                                  errors=chaos.errors))
    if not chaos.journals:
        return not_applicable("no chaos journals (the claimed game day is OPS-005)")
    latest = {kind: chaos.latest(kind) for kind in chaos.kinds}
    ages = {kind: age_days(j, ctx.as_of) for kind, j in latest.items()}
    ev = {"drills": {kind: brief(j, ctx.as_of) for kind, j in latest.items()}}
    failed = [f"{kind} ({outcome_text(j)}; {j['path']})" for kind, j in latest.items()
              if concluded(j) and not drill_passed(j)]
    if failed:
        return _evidence(violated(f"newest drill failed: {'; '.join(failed)}", **ev))
    unfinished = [f"{kind} ({j['status']})" for kind in chaos.kinds if not concluded(j := chaos.of_kind(kind)[0])]
    undated = [kind for kind, age in ages.items() if age is None]
    stale = [f"{kind} {age} days old" for kind, age in ages.items() if age is not None and age > GAME_DAY_MAX_AGE_DAYS]
    future = [kind for kind, age in ages.items() if age is not None and age < 0]
    problems = ([f"older than {GAME_DAY_MAX_AGE_DAYS} days: {', '.join(stale)}"] if stale else []) + \
        ([f"newest run did not finish, re-run it: {', '.join(unfinished)}"] if unfinished else []) + \
        ([f"dated after {ctx.as_of}: {', '.join(future)}"] if future else []) + \
        ([f"undated: {', '.join(undated)}"] if undated else [])
    if problems:
        return _evidence(violated("; ".join(problems), warn=True, **ev))
    return _evidence(passed(", ".join(f"{kind} passed {age} day(s) ago" for kind, age in ages.items()), **ev))
