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

    def to_dict(self) -> dict[str, Any]:
        return {
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

    @property
    def open_findings(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("fail", "warn")]
