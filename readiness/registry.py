"""Check registry: every check registered once with a stable id, its dimension, severity, rationale and fix.

Checks are small functions grouped by dimension in `readiness/checks/`. A check looks at a `CheckContext` and
returns an `Outcome` (or None when it passes with nothing to say). Ids never change meaning once published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from forge.readiness.result import DIMENSIONS, Severity

OutcomeStatus = Literal["fail", "warn", "pass", "not_applicable"]

_ID = re.compile(r"^(COR|PERF|REL|OBS|DEP|COST|SEC|OPS)-\d{3}$")
_PREFIX_FOR = {
    "correctness": "COR", "performance": "PERF", "reliability": "REL", "observability": "OBS",
    "deployment": "DEP", "cost": "COST", "security": "SEC", "operations": "OPS",
}


@dataclass
class Outcome:
    status: OutcomeStatus
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    path: str | None = None          # dotted deploy.yaml path; defaults to the check's own path
    basis: Literal["claim", "evidence"] = "claim"


def violated(message: str, path: str | None = None, *, warn: bool = False, **evidence: Any) -> Outcome:
    """The check found a problem. Fail by default; `warn=True` for a softer finding of the same check."""
    return Outcome("warn" if warn else "fail", message, evidence, path)


def passed(message: str, path: str | None = None, **evidence: Any) -> Outcome:
    return Outcome("pass", message, evidence, path)


def not_applicable(message: str) -> Outcome:
    return Outcome("not_applicable", message)


@dataclass(frozen=True)
class Check:
    id: str
    dimension: str
    severity: Severity
    title: str
    rationale: str
    remediation: str
    path: str                         # the deploy.yaml path this check is about, for locating findings
    func: Callable[[Any], Outcome | None]
    references: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "dimension": self.dimension, "severity": self.severity, "title": self.title,
            "rationale": self.rationale, "remediation": self.remediation, "path": self.path,
            "references": list(self.references),
        }


REGISTRY: dict[str, Check] = {}


def check(
    id: str,
    dimension: str,
    severity: Severity,
    title: str,
    *,
    rationale: str,
    remediation: str,
    path: str = "",
    references: tuple[str, ...] = (),
) -> Callable[[Callable[[Any], Outcome | None]], Callable[[Any], Outcome | None]]:
    """Register a check. Ids are validated so a typo can't publish an id we would later have to keep."""
    if not _ID.match(id):
        raise ValueError(f"check id {id!r} must look like REL-004")
    if dimension not in DIMENSIONS:
        raise ValueError(f"check {id}: unknown dimension {dimension!r}")
    if not id.startswith(_PREFIX_FOR[dimension] + "-"):
        raise ValueError(f"check {id}: dimension {dimension} needs prefix {_PREFIX_FOR[dimension]}-")

    def register(func: Callable[[Any], Outcome | None]) -> Callable[[Any], Outcome | None]:
        if id in REGISTRY:
            raise ValueError(f"check id {id} registered twice")
        REGISTRY[id] = Check(id, dimension, severity, title, " ".join(rationale.split()),
                             " ".join(remediation.split()), path, func, references)
        return func

    return register


def all_checks() -> dict[str, Check]:
    # Importing the package registers every check module exactly once.
    import forge.readiness.checks  # noqa: F401

    return REGISTRY
