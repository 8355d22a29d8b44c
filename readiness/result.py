"""What an assessment produces: findings, dimension scores and a verdict. Report writers read only these types."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Status = Literal["fail", "warn", "pass", "waived", "not_applicable"]
Severity = Literal["critical", "high", "medium", "low"]
Verdict = Literal["ready", "not_ready"]

# The 8 dimensions of the Forge readiness framework, in report order.
DIMENSIONS: dict[str, str] = {
    "correctness": "Correctness & contracts",
    "performance": "Performance & capacity",
    "reliability": "Reliability & failure modes",
    "observability": "Observability",
    "deployment": "Deployment & rollback",
    "cost": "Cost & efficiency",
    "security": "Security & compliance",
    "operations": "Operational maturity",
}
# Never traded for cost: a fail in any of these makes the verdict not_ready whatever the total.
GATING_DIMENSIONS = ("correctness", "reliability", "observability")


@dataclass
class Finding:
    check: str                       # stable id, e.g. "REL-004"
    dimension: str                   # one of DIMENSIONS
    severity: Severity
    status: Status
    title: str
    message: str                     # what was found, in this deployment's terms
    evidence: dict[str, Any]         # the values that triggered it
    remediation: str                 # the fix
    path: str = ""                   # dotted deploy.yaml path the finding is about
    line: int = 1                    # 1-based line of `path` in the file (for SARIF / editors)
    column: int = 1
    basis: Literal["claim", "evidence"] = "claim"  # from what the YAML says, or from measurements
    waiver: dict[str, Any] | None = None           # {"reason", "expires"} when status is waived
    rationale: str = ""                            # why the check matters (the check's own text)

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: the dict is for serialising, and dataclasses.asdict's deep copy of every evidence
        # value was most of the time a 1,000-file fleet report spent after the assessments were done.
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DimensionScore:
    id: str
    name: str
    score: int                       # 0-100
    status: Literal["pass", "warn", "fail"]
    counts: dict[str, int] = field(default_factory=dict)  # findings per status

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Assessment:
    forge_version: str
    file: str
    deployment: str
    verdict: Verdict
    score: int
    dimensions: list[DimensionScore]
    findings: list[Finding]
    as_of: str                       # ISO date the assessment was made for (waiver expiry, recency)
    verdict_reasons: list[str] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=dict)  # capacity & cost model summary, when computable
    # Measurements the checks graded, summarised for the reports (see `evidence_summary`); empty without any.
    evidence: dict[str, Any] = field(default_factory=dict)
    # Comparison with a previous assessment (`forge readiness assess --baseline`, forge.readiness.baseline).
    baseline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "forge_version": self.forge_version,
            "file": self.file,
            "deployment": self.deployment,
            "verdict": self.verdict,
            "score": self.score,
            "verdict_reasons": self.verdict_reasons,
            "as_of": self.as_of,
            "dimensions": [d.to_dict() for d in self.dimensions],
            "findings": [f.to_dict() for f in self.findings],
            "capacity": self.capacity,
        }
        # Optional keys, present only when there is something to say, so the documented shape stays as it was.
        if self.evidence:
            data["evidence"] = self.evidence
        if self.baseline is not None:
            data["baseline"] = self.baseline
        return data

    @property
    def open_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("fail", "warn")]


# ------------------------------------------------------------------------------------------ evidence summary
LATENCY_SIGNALS = ("ttft", "itl", "e2e")
LATENCY_QUANTILES = ("p50", "p95", "p99")
CHAOS_MEASURES = ("detection_seconds", "drain_seconds", "rollback_seconds", "recovery_seconds")
# Budgets drawn next to chaos timings when a journal record carries none of its own: the framework's targets, the
# same the drill checks grade (REL-012: a hung engine is detected within 30 s; DEP-001/DEP-008: rollback under
# 5 minutes) plus 60 s, what an automated rollback should take. tests/test_report_screenshot.py keeps them in step.
CHAOS_BUDGETS_SECONDS: dict[str, list[float]] = {"detection_seconds": [30.0], "rollback_seconds": [300.0, 60.0]}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        return None
    return round(float(v), 6)  # JSON without float noise (0.5549999999999999)


def _load_item(rec: dict[str, Any]) -> dict[str, Any]:
    pct = rec.get("percentiles_s") if isinstance(rec.get("percentiles_s"), dict) else {}
    outcomes = rec.get("outcomes") if isinstance(rec.get("outcomes"), dict) else {}
    shape = rec.get("shape") if isinstance(rec.get("shape"), dict) else {}
    return {
        "path": str(rec.get("path", "")), "source": str(rec.get("source", "")),
        "requests": shape.get("requests"), "ok": outcomes.get("ok"), "failed": outcomes.get("failed"),
        "percentiles_s": {sig: {q: _number((pct.get(sig) or {}).get(q)) for q in LATENCY_QUANTILES}
                          for sig in LATENCY_SIGNALS},
    }


def _records(value: Any) -> list[dict[str, Any]]:
    """Records from a CheckContext evidence property: a list, or (records, errors) like `load_evidence`."""
    if value is None:
        return []
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], list):
        value = value[0]
    if isinstance(value, dict):
        value = value.get("records", value.get("journals", [value]))
    return [r for r in value or [] if isinstance(r, dict)] if isinstance(value, (list, tuple)) else []


def _chaos_item(rec: dict[str, Any]) -> dict[str, Any]:
    experiment = rec.get("experiment") if isinstance(rec.get("experiment"), dict) else {}
    measured = rec.get("measurements") if isinstance(rec.get("measurements"), dict) else rec
    kind = rec.get("kind") or experiment.get("kind") or rec.get("title") or experiment.get("title") or "experiment"
    budgets = dict(CHAOS_BUDGETS_SECONDS)
    own = rec.get("budgets_seconds") or rec.get("budgets")
    if isinstance(own, dict):
        for key, v in own.items():
            vals = [b for b in (v if isinstance(v, (list, tuple)) else [v]) if _number(b) is not None]
            if vals:
                budgets[key if key.endswith("_seconds") else f"{key}_seconds"] = [float(b) for b in vals]
    return {
        "path": str(rec.get("path") or rec.get("file") or ""), "kind": str(kind),
        "title": str(rec.get("title") or experiment.get("title") or ""),
        "status": str(rec.get("status") or "unknown"),
        **{k: rec[k] for k in ("deviated", "passed") if isinstance(rec.get(k), bool)},
        "end": rec.get("end") or rec.get("start"),
        "lost_requests": measured.get("lost_requests") if isinstance(measured.get("lost_requests"), int) else None,
        **{m: _number(measured.get(m)) for m in CHAOS_MEASURES},
        "budgets_seconds": {m: budgets[m] for m in CHAOS_MEASURES if m in budgets},
    }


def evidence_summary(load_records: Any, slo: Any, chaos_records: Any = None) -> dict[str, Any]:
    """The `evidence` block of an Assessment: measured latency percentiles per load file next to the SLO
    targets, and chaos timings per journal. Tolerant of missing figures (None), never re-reads a file."""
    out: dict[str, Any] = {}
    load = [_load_item(r) for r in _records(load_records)]
    if load:
        out["slo"] = {f"{sig}_p95_seconds": _number(getattr(slo, f"{sig}_p95_seconds", None))
                      for sig in LATENCY_SIGNALS}
        out["load"] = load
    chaos = [_chaos_item(r) for r in _records(chaos_records)]
    if chaos:
        out["chaos"] = chaos
    return out
