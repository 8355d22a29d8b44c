"""Dimension scores, the total score and the verdict. The formula is documented in docs/scoring.md."""

from __future__ import annotations

from forge.readiness.result import DIMENSIONS, GATING_DIMENSIONS, DimensionScore, Finding

# How much a check weighs in its dimension's score.
SEVERITY_WEIGHT = {"critical": 10, "high": 5, "medium": 3, "low": 1}
# How much of a check's weight a finding earns: a warning earns half, a waiver counts as accepted risk.
STATUS_CREDIT = {"pass": 1.0, "waived": 1.0, "warn": 0.5, "fail": 0.0}
# Weight of each dimension in the total; the gating dimensions weigh most.
DIMENSION_WEIGHT = {
    "correctness": 15, "performance": 15, "reliability": 15, "observability": 15,
    "deployment": 10, "cost": 10, "security": 10, "operations": 10,
}
DIMENSION_FAIL_BELOW = 60
DIMENSION_WARN_BELOW = 85
READY_MIN_TOTAL = 70


def score_dimension(dimension: str, findings: list[Finding]) -> DimensionScore:
    mine = [f for f in findings if f.dimension == dimension]
    counts: dict[str, int] = {}
    for f in mine:
        counts[f.status] = counts.get(f.status, 0) + 1
    scored = [f for f in mine if f.status in STATUS_CREDIT]
    total_weight = sum(SEVERITY_WEIGHT[f.severity] for f in scored)
    if total_weight == 0:
        score = 100
    else:
        earned = sum(SEVERITY_WEIGHT[f.severity] * STATUS_CREDIT[f.status] for f in scored)
        score = round(100 * earned / total_weight)
    # A failed critical or high check fails its dimension whatever the arithmetic says.
    blocking = any(f.status == "fail" and f.severity in ("critical", "high") for f in mine)
    if blocking or score < DIMENSION_FAIL_BELOW:
        status = "fail"
    elif counts.get("fail") or counts.get("warn") or score < DIMENSION_WARN_BELOW:
        status = "warn"
    else:
        status = "pass"
    return DimensionScore(dimension, DIMENSIONS[dimension], score, status, counts)


def verdict(dimensions: list[DimensionScore], findings: list[Finding]) -> tuple[str, int, list[str]]:
    """Returns (verdict, total score, reasons). Reasons explain a not_ready verdict in one line each."""
    total = round(sum(DIMENSION_WEIGHT[d.id] * d.score for d in dimensions) / sum(DIMENSION_WEIGHT.values()))
    reasons: list[str] = []
    for d in dimensions:
        if d.id in GATING_DIMENSIONS and d.status == "fail":
            reasons.append(f"{d.name} fails (gating dimension: never traded for cost or speed)")
    criticals = sorted({f.check for f in findings if f.status == "fail" and f.severity == "critical"})
    if criticals:
        reasons.append(f"critical finding(s) open: {', '.join(criticals)}")
    if total < READY_MIN_TOTAL:
        reasons.append(f"total score {total} is below {READY_MIN_TOTAL}")
    return ("not_ready" if reasons else "ready"), total, reasons
