"""Missing deploy.yaml sections read as their empty defaults, so checks report them instead of crashing."""

from __future__ import annotations

from forge.schema import (
    SLO, Correctness, Evidence, Observability, Operations, Reliability, Rollout, Security, Traffic,
)


def traffic(ctx) -> Traffic:
    return ctx.d.traffic or Traffic()


def slo(ctx) -> SLO:
    return ctx.d.slo or SLO()


def rollout(ctx) -> Rollout:
    return ctx.d.rollout or Rollout()


def reliability(ctx) -> Reliability:
    return ctx.d.reliability or Reliability()


def observability(ctx) -> Observability:
    return ctx.d.observability or Observability()


def security(ctx) -> Security:
    return ctx.d.security or Security()


def operations(ctx) -> Operations:
    return ctx.d.operations or Operations()


def correctness(ctx) -> Correctness:
    return ctx.d.correctness or Correctness()


def evidence(ctx) -> Evidence:
    return ctx.d.evidence or Evidence()


def growth(ctx, multiplier: float):
    """The capacity model's point for this traffic multiplier, or None when it can't be computed."""
    cap = ctx.capacity
    if cap is None:
        return None
    return next((p for p in cap.growth if abs(p.multiplier - multiplier) < 1e-9), None)


def is_prod(ctx) -> bool:
    # An undeclared environment is treated as production: safe by default.
    return ctx.d.metadata.environment in (None, "prod")
