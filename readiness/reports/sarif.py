"""SARIF 2.1.0 for GitHub code scanning: every open or waived finding located at its deploy.yaml line.

GitHub's requirements (docs.github.com, "SARIF support for code scanning"): `$schema`/`version` 2.1.0, one run with
`tool.driver.name` and rules, results with `ruleId`, `message.text` and a `physicalLocation` whose `uri` is
relative to the repository root (`uriBaseId` `%SRCROOT%`), `region.startLine` ≥ 1; `partialFingerprints` keep an
alert the same alert when lines move; a rule's `security-severity` (a number 0.0–10.0 as a string) marks it as a
security alert and sets its severity there.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from forge.readiness.reports._common import dimension_name, json_document, sorted_findings, waiver_text
from forge.readiness.result import Assessment, Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# Where the Forge distribution is published; replace with the project's home page once it has one.
INFORMATION_URI = "https://pypi.org/project/forge-inference/"
FINGERPRINT_KEY = "forgeFinding/v1"
# Rule level for a check of this severity (used for the rule's default and for waived results).
SEVERITY_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}
RESULT_LEVEL = {"fail": "error", "warn": "warning"}
# GitHub: > 9.0 critical, 7.0–8.9 high, 4.0–6.9 medium, 0.1–3.9 low.
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}


def artifact_uri(file: str, base_dir: Path | None) -> tuple[str, bool]:
    """(uri, relative?) for a deploy file: relative to base_dir when it lies under it, else as given."""
    p = Path(file)
    if base_dir is not None:
        try:
            p = p.resolve().relative_to(Path(base_dir).resolve())
        except (ValueError, OSError):
            p = Path(file)
    if p.is_absolute():
        return p.as_uri(), False
    rel = PurePosixPath(*p.parts) if p.parts else PurePosixPath(".")
    return quote(str(rel), safe="/-._~!$&'()*+,;=:@"), True


def fingerprint(rule_id: str, deployment: str, path: str) -> str:
    return hashlib.sha256("\x00".join((rule_id, deployment, path)).encode()).hexdigest()[:32]


def _rule_name(title: str) -> str:
    """`Shutdown timeout fits the grace period` → `ShutdownTimeoutFitsTheGracePeriod` (SARIF rule names are ids)."""
    words = re.findall(r"[A-Za-z0-9]+", title)
    return "".join(w[:1].upper() + w[1:] for w in words) or "Check"


def _rule(f: Finding) -> dict[str, Any]:
    dim = dimension_name(f.dimension)
    properties: dict[str, Any] = {"tags": [f.dimension], "precision": "high", "problem.severity":
                                  {"critical": "error", "high": "error", "medium": "warning",
                                   "low": "recommendation"}.get(f.severity, "warning")}
    if f.dimension == "security":
        properties["tags"].append("security")
        properties["security-severity"] = SECURITY_SEVERITY.get(f.severity, "5.5")
    return {
        "id": f.check,
        "name": _rule_name(f.title),
        "shortDescription": {"text": f.title},
        "fullDescription": {"text": f.rationale or f"{f.title} ({dim}; {f.severity} severity). Forge readiness "
                                    f"check {f.check}; see `forge readiness explain {f.check}`."},
        "help": {
            "text": f"Fix: {f.remediation}",
            "markdown": (f"**Why:** {f.rationale}\n\n" if f.rationale else "") + f"**Fix:** {f.remediation}\n\n"
                        f"Dimension: {dim} · severity: {f.severity} · "
                        f"details: `forge readiness explain {f.check}`",
        },
        "defaultConfiguration": {"level": SEVERITY_LEVEL.get(f.severity, "warning")},
        "properties": properties,
    }


def sarif_log(assessments: list[Assessment], *, base_dir: Path | None = None) -> dict[str, Any]:
    # One rule per check id seen, in id order, so a check keeps its ruleIndex from run to run.
    first: dict[str, Finding] = {}
    for a in assessments:
        for f in a.findings:
            first.setdefault(f.check, f)
    rule_ids = sorted(first)
    rule_index = {rid: i for i, rid in enumerate(rule_ids)}

    results: list[dict[str, Any]] = []
    for a in assessments:
        uri, relative = artifact_uri(a.file, base_dir)
        artifact: dict[str, Any] = {"uri": uri}
        if relative:
            artifact["uriBaseId"] = "%SRCROOT%"
        for f in sorted_findings(a.findings):
            if f.status not in ("fail", "warn", "waived"):
                continue
            result: dict[str, Any] = {
                "ruleId": f.check,
                "ruleIndex": rule_index[f.check],
                "level": RESULT_LEVEL.get(f.status) or SEVERITY_LEVEL.get(f.severity, "warning"),
                "message": {"text": f"{a.deployment}: {f.title}: {f.message}"},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": dict(artifact),
                        "region": {"startLine": max(1, int(f.line or 1)), "startColumn": max(1, int(f.column or 1))},
                    },
                    **({"logicalLocations": [{"fullyQualifiedName": f.path, "kind": "member"}]} if f.path else {}),
                }],
                "partialFingerprints": {FINGERPRINT_KEY: fingerprint(f.check, a.deployment, f.path)},
                "properties": {"deployment": a.deployment, "dimension": f.dimension, "severity": f.severity,
                               "status": f.status, "basis": f.basis, "evidence": f.evidence},
            }
            if f.status == "waived":
                result["suppressions"] = [{"kind": "external", "justification": waiver_text(f)}]
            results.append(result)

    version = assessments[0].forge_version if assessments else "0"
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "Forge",
                "version": version,
                "semanticVersion": version,
                "informationUri": INFORMATION_URI,
                "rules": [_rule(first[rid]) for rid in rule_ids],
            }},
            "originalUriBaseIds": {"%SRCROOT%": {"description": {"text": "The repository root."}}},
            "results": results,
            "columnKind": "unicodeCodePoints",
            "properties": {"assessments": [
                {"file": a.file, "deployment": a.deployment, "verdict": a.verdict, "score": a.score,
                 "as_of": a.as_of} for a in assessments]},
        }],
    }


def sarif(assessments: list[Assessment], *, base_dir: Path | None = None) -> str:
    return json_document(sarif_log(assessments, base_dir=base_dir))
