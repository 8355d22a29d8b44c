"""Dimension 8 — operational maturity: someone is on call, knows what to do, and has practised it."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import REGISTRY, check, not_applicable, passed, violated

GAME_DAY_MAX_AGE_DAYS = 90


@check("OPS-001", "operations", "high", "An on-call rotation owns the service",
       rationale="""Alerts need a person at the other end, at any hour, who knows the service.""",
       remediation="Name the rotation in operations.oncall_rotation (PagerDuty / Opsgenie schedule).",
       path="operations.oncall_rotation")
def oncall(ctx):
    if not s.operations(ctx).oncall_rotation:
        return violated("no on-call rotation")
    return passed(f"on-call: {s.operations(ctx).oncall_rotation}")


@check("OPS-002", "operations", "high", "An escalation policy exists",
       rationale="""When the first responder can't fix a GPU-fleet or model issue, they need to know who is
       next (platform, model owners, vendor) without searching.""",
       remediation="Link the escalation policy in operations.escalation_policy.",
       path="operations.escalation_policy")
def escalation(ctx):
    if not s.operations(ctx).escalation_policy:
        return violated("no escalation policy")
    return passed("escalation policy linked")


@check("OPS-003", "operations", "high", "Runbooks exist for the service",
       rationale="""Runbooks turn an alert into steps: how to confirm, mitigate (drain, roll back, scale) and
       escalate. Forge ships one per alert it generates.""",
       remediation="List the runbooks in operations.runbooks (one per paging alert: confirm, mitigate, escalate).",
       path="operations.runbooks")
def runbooks(ctx):
    if not s.operations(ctx).runbooks:
        return violated("no runbooks")
    return passed(f"{len(s.operations(ctx).runbooks)} runbook(s)")


@check("OPS-004", "operations", "medium", "Synthetic monitoring probes the service end to end",
       rationale="""A real completion request every minute through the public path catches what internal
       metrics can't: DNS, auth, the gateway, a model that answers garbage.""",
       remediation="Run a synthetic probe (a short streaming completion) and set operations.synthetic_monitoring.",
       path="operations.synthetic_monitoring")
def synthetic(ctx):
    if not s.operations(ctx).synthetic_monitoring:
        return violated("no synthetic monitoring", warn=True)
    return passed("synthetic monitoring on")


@check("OPS-005", "operations", "medium", f"A game day ran in the last {GAME_DAY_MAX_AGE_DAYS} days",
       rationale="""Runbooks and failovers rot; teams that rehearse recover faster. A quarterly game day keeps the
       drill fresh.""",
       remediation="Run a game day with the team (GPU fault, hung engine, bad canary) and record operations.last_game_day, "
                   "or list its `forge chaos run --journal` file in evidence.chaos_journals.",
       path="operations.last_game_day")
def game_day(ctx):
    import datetime as dt

    claimed = s.operations(ctx).last_game_day
    # A drill journal is a game day that left a record: its end date counts when it is newer than the claim.
    drilled = [dt.date.fromisoformat(j["end"][:10]) for j in ctx.chaos_evidence.journals if j.get("end")]
    newest_drill = max(drilled) if drilled else None
    last = max(d for d in (claimed, newest_drill) if d is not None) if claimed or newest_drill else None
    if last is None:
        return violated("no game day recorded")
    age = ctx.days_since(last)
    source = "journal" if newest_drill is not None and last == newest_drill else "operations.last_game_day"
    if age < 0:
        outcome = violated(f"last game day {last} is in the future ({source})", warn=True, last_game_day=last.isoformat())
    elif age > GAME_DAY_MAX_AGE_DAYS:
        outcome = violated(f"last game day {age} days ago ({source})", warn=True, last_game_day=last.isoformat(),
                           age_days=age)
    else:
        outcome = passed(f"game day {age} days ago ({source})", last_game_day=last.isoformat(), age_days=age)
    if source == "journal":
        outcome.basis = "evidence"
    return outcome


@check("OPS-006", "operations", "medium", "Waivers are current and name real checks",
       rationale="""A waiver is accepted risk with an end date. An expired waiver is risk nobody re-accepted; a
       waiver for an unknown check id hides nothing but suggests a typo.""",
       remediation="Renew the waiver with a new reason and date, or fix the finding and delete the waiver.",
       path="waivers")
def waivers_current(ctx):
    if not ctx.d.waivers:
        return not_applicable("no waivers")
    expired = [w.check for w in ctx.d.waivers if w.expires < ctx.as_of]
    unknown = [w.check for w in ctx.d.waivers if w.check not in REGISTRY]
    if expired:
        i = next(i for i, w in enumerate(ctx.d.waivers) if w.check == expired[0])
        return violated(f"expired waiver(s): {', '.join(expired)}", f"waivers.{i}.expires", expired=expired)
    if unknown:
        i = next(i for i, w in enumerate(ctx.d.waivers) if w.check == unknown[0])
        return violated(f"waiver(s) for unknown check(s): {', '.join(unknown)}", f"waivers.{i}.check", warn=True,
                        unknown=unknown)
    return passed(f"{len(ctx.d.waivers)} current waiver(s)")


@check("OPS-007", "operations", "medium", "An owning team and environment are declared",
       rationale="""Findings, alerts and cost need an owner; the environment decides how strict the checks
       are.""",
       remediation="Set metadata.team and metadata.environment.",
       path="metadata")
def owner(ctx):
    missing = [k for k in ("team", "environment") if not getattr(ctx.d.metadata, k)]
    if missing:
        return violated(f"missing: {', '.join('metadata.' + m for m in missing)}", missing=missing)
    return passed(f"owned by {ctx.d.metadata.team} ({ctx.d.metadata.environment})")
