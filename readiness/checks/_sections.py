"""Missing deploy.yaml sections read as their empty defaults, so checks report them instead of crashing."""

from __future__ import annotations

from functools import cache

from forge.schema import (
    SLO, Correctness, Evidence, Observability, Operations, Reliability, Rollout, Security, Traffic,
)

# A missing section is its class's defaults. model_construct() gives the same object as calling the class with no
# arguments (these sections have no validator that runs on defaults; tests/test_readiness.py compares them), without
# building the section's own validator — a deploy file's sections were validated as part of the whole Deployment, so
# that build would cost more than every check reading it together. One instance per class, shared (checks only
# read sections): model_construct() itself inspects every default factory, about 0.5 ms a call.


@cache
def _default(section: type):
    return section.model_construct()


def traffic(ctx) -> Traffic:
    return ctx.d.traffic or _default(Traffic)


def slo(ctx) -> SLO:
    return ctx.d.slo or _default(SLO)


def rollout(ctx) -> Rollout:
    return ctx.d.rollout or _default(Rollout)


def reliability(ctx) -> Reliability:
    return ctx.d.reliability or _default(Reliability)


def observability(ctx) -> Observability:
    return ctx.d.observability or _default(Observability)


def security(ctx) -> Security:
    return ctx.d.security or _default(Security)


def operations(ctx) -> Operations:
    return ctx.d.operations or _default(Operations)


def correctness(ctx) -> Correctness:
    return ctx.d.correctness or _default(Correctness)


def evidence(ctx) -> Evidence:
    return ctx.d.evidence or _default(Evidence)


def growth(ctx, multiplier: float):
    """The capacity model's point for this traffic multiplier, or None when it can't be computed."""
    cap = ctx.capacity
    if cap is None:
        return None
    return next((p for p in cap.growth if abs(p.multiplier - multiplier) < 1e-9), None)


def is_prod(ctx) -> bool:
    # An undeclared environment is treated as production: safe by default.
    return ctx.d.metadata.environment in (None, "prod")
