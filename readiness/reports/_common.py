"""Ordering and wording shared by every report writer, so all formats tell the same story in the same order."""

from __future__ import annotations

import json
from typing import Any

from forge.readiness.result import DIMENSIONS, GATING_DIMENSIONS, Assessment, Finding

SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
STATUS_ORDER = {"fail": 0, "warn": 1, "waived": 2, "pass": 3, "not_applicable": 4}
VERDICT_LABEL = {"ready": "READY", "not_ready": "NOT READY"}
STATUS_LABEL = {"fail": "fail", "warn": "warn", "waived": "waived", "pass": "pass", "not_applicable": "n/a"}
GATING_RULE = (
    f"{', '.join(DIMENSIONS[d] for d in GATING_DIMENSIONS)} are gating: a fail in any of them makes the verdict "
    "not ready whatever the total score."
)


def json_document(data: Any) -> str:
    """Indented JSON for the json and SARIF reports. orjson: a fleet's report is tens of MB, and the standard
    library's indenting encoder is pure Python (3.5 s for 1,000 files, a third of the whole assessment). Dates,
    paths and anything else unknown are written as str() as before; NaN and infinity, which JSON lacks, as null."""
    import orjson

    return orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                        | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                        | orjson.OPT_APPEND_NEWLINE).decode()


def finding_key(f: Finding) -> tuple[int, int, str]:
    """Worst first: by status (fail, warn, waived, pass, n/a), then severity, then check id."""
    return (STATUS_ORDER.get(f.status, 9), SEVERITY_ORDER.get(f.severity, 9), f.check)


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=finding_key)


def open_findings(a: Assessment) -> list[Finding]:
    return sorted_findings(a.open_findings)


def waived_findings(a: Assessment) -> list[Finding]:
    return sorted_findings([f for f in a.findings if f.status == "waived"])


def dimension_name(dim: str) -> str:
    return DIMENSIONS.get(dim, dim)


def failing_dimensions(a: Assessment) -> list[str]:
    return [d.id for d in a.dimensions if d.status == "fail"]


def status_counts(a: Assessment) -> dict[str, int]:
    counts = {s: 0 for s in STATUS_ORDER}
    for f in a.findings:
        counts[f.status] = counts.get(f.status, 0) + 1
    return counts


def evidence_text(value: Any) -> str:
    """One evidence value as short text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
    except (TypeError, ValueError):
        return str(value)


def waiver_text(f: Finding) -> str:
    w = f.waiver or {}
    reason = str(w.get("reason") or "no reason given")
    expires = w.get("expires")
    return f"{reason} (until {expires})" if expires else reason


def location(a: Assessment, f: Finding) -> str:
    """file:line plus the deploy.yaml path, e.g. `deploy.yaml:42 (reliability.liveness)`."""
    where = f"{a.file}:{f.line}"
    return f"{where} ({f.path})" if f.path else where


# -------------------------------------------------------------------------------------------------------- baseline
def signed(n: float | int | None) -> str:
    """A delta as people write it: +6, −7 (a real minus sign), ±0; — when unknown."""
    if n is None:
        return "—"
    if n == 0:
        return "±0"
    return f"+{n:g}" if n > 0 else f"−{-n:g}"


def baseline_headline(b: dict[str, Any]) -> str:
    """`score 69 → 68 (−1) · verdict NOT READY → READY`, the first line of every format's baseline section."""
    s, v = b["score"], b["verdict"]
    verdict_part = (f"verdict {VERDICT_LABEL.get(v['before'], v['before'])} → {VERDICT_LABEL.get(v['after'], v['after'])}"
                    if v["changed"] else f"verdict {VERDICT_LABEL.get(v['after'], v['after'])} (unchanged)")
    return f"score {s['before']:g} → {s['after']:g} ({signed(s['delta'])}) · {verdict_part}"


def baseline_origin(b: dict[str, Any]) -> str:
    """Where the baseline came from: `prev.json, as of 2026-11-01`."""
    return ", ".join(x for x in (b.get("source", ""), f"as of {b['as_of']}" if b.get("as_of") else "") if x)


def moved_dimensions(b: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in b.get("dimensions", []) if d.get("delta") or d.get("status_before") != d.get("status_after")]


# Sections of the findings diff, in report order: (key, heading).
BASELINE_SECTIONS = (("new", "Newly open"), ("fixed", "Fixed"), ("changed", "Status changed"))


def status_word(status: str | None) -> str:
    return "not checked" if status is None else STATUS_LABEL.get(status, status)


def quiet_checks_note(b: dict[str, Any]) -> str:
    """Checks added to (or retired from) Forge since the baseline with nothing to report: named, not listed."""
    quiet = b.get("checks_quiet") or []
    if not quiet:
        return ""
    return (f"{len(quiet)} check{'s' if len(quiet) > 1 else ''} added or retired since the baseline, with nothing "
            f"to report (pass or n/a): {', '.join(quiet)}")
