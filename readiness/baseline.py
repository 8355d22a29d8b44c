"""`forge readiness assess --baseline previous.json`: what got better or worse since the last assessment.

The baseline is a report written by `forge readiness assess --format json` (one object, or an array for a fleet).
Each current assessment is matched to a previous one by file and deployment name, then compared: score and
verdict, each dimension's score, and every check whose status moved. The comparison lands in
`Assessment.baseline`, which every report writer shows. A baseline that can't be read, isn't a Forge JSON report,
or is about other deployments is bad input (one line, exit 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from forge.errors import InputError
from forge.readiness.result import DIMENSIONS, Assessment

# A JSON report of a 1,000-file fleet is about 40 MB; far more is not a report.
MAX_BASELINE_BYTES = 256 * 2**20
OPEN = ("fail", "warn")
# Higher is better: a move up this ladder is an improvement.
STATUS_RANK = {"fail": 0, "warn": 1, "waived": 2, "pass": 3, "not_applicable": 3}
FIX = "give a report written by `forge readiness assess --format json`"


def _bad(path: Path, problem: str, fix: str = FIX) -> InputError:
    return InputError(f"--baseline {path}: {problem} — {fix}")


def _check_entry(path: Path, entry: Any, where: str) -> dict[str, Any]:
    """One previous assessment, checked for the keys the comparison reads."""
    if not isinstance(entry, dict):
        raise _bad(path, f"{where} is {type(entry).__name__}, not a report object")
    if "runs" in entry and "version" in entry:
        raise _bad(path, "this is a SARIF log, not a JSON report")
    missing = [k for k in ("deployment", "verdict", "score", "dimensions", "findings") if k not in entry]
    if missing:
        raise _bad(path, f"{where} has no {', '.join(repr(k) for k in missing)}: not a Forge readiness report")
    if not isinstance(entry["deployment"], str) or entry["verdict"] not in ("ready", "not_ready"):
        raise _bad(path, f"{where}: 'deployment' must be a name and 'verdict' ready or not_ready")
    if isinstance(entry["score"], bool) or not isinstance(entry["score"], (int, float)):
        raise _bad(path, f"{where}: 'score' is {entry['score']!r}, not a number")
    for key, needs in (("dimensions", ("id", "score")), ("findings", ("check", "status"))):
        items = entry[key]
        if not isinstance(items, list) or not all(isinstance(i, dict) and all(n in i for n in needs) for i in items):
            raise _bad(path, f"{where}: '{key}' must be a list of objects with {' and '.join(needs)}")
    return entry


def load_baseline(path: Path) -> list[dict[str, Any]]:
    """The previous assessments in a JSON report, checked; InputError (one line) when it isn't one."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise _bad(path, "is a directory", "give the JSON report file")
        if size > MAX_BASELINE_BYTES:
            raise _bad(path, f"{size / 2**20:.0f} MiB is too large for a report")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _bad(path, "no such file", f"{FIX} and pass its path") from None
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    except OSError as exc:
        raise _bad(path, f"can't be read ({exc.strerror})", "check the path and its permissions") from None
    if not text.strip():
        raise _bad(path, "empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise _bad(path, "an empty list holds no assessment")
    return [_check_entry(path, e, f"entry {i}" if isinstance(data, list) else "the report")
            for i, e in enumerate(entries)]


# ------------------------------------------------------------------------------------------------------ matching
def _same_file(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _match(a: Assessment, previous: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Same file and name first, then the same file (a renamed deployment), then the one entry of that name."""
    for p in previous:
        if p["deployment"] == a.deployment and _same_file(str(p.get("file", "")), a.file):
            return p
    for p in previous:
        if _same_file(str(p.get("file", "")), a.file):
            return p
    named = [p for p in previous if p["deployment"] == a.deployment]
    return named[0] if len(named) == 1 else None


def attach(assessments: list[Assessment], previous: list[dict[str, Any]], source: Path) -> None:
    """Set `baseline` on each assessment. A fleet may have grown (an unmatched file says so); a baseline that
    matches none of the assessments is about something else, which is bad input."""
    matches = [_match(a, previous) for a in assessments]
    if assessments and not any(matches):
        names = ", ".join(sorted({repr(p["deployment"]) for p in previous})[:3])
        now = ", ".join(sorted({repr(a.deployment) for a in assessments})[:3])
        raise _bad(source, f"it is about {names}, not {now}",
                   "give the previous report of the same deployment (matched by file or metadata.name)")
    for a, p in zip(assessments, matches):
        a.baseline = compare(a, p, source) if p is not None else {"source": str(source), "matched": False}


# ----------------------------------------------------------------------------------------------------- comparing
def _finding_change(check: str, before: str | None, after: str | None, info: dict[str, Any]) -> dict[str, Any]:
    rank_b, rank_a = STATUS_RANK.get(before or ""), STATUS_RANK.get(after or "")
    direction = ("better" if rank_a > rank_b else "worse" if rank_a < rank_b else "same") \
        if rank_a is not None and rank_b is not None else ("worse" if after in OPEN else "same")
    return {"check": check, "title": info.get("title", ""), "dimension": info.get("dimension", ""),
            "severity": info.get("severity", ""), "before": before, "after": after, "direction": direction}


def compare(a: Assessment, previous: dict[str, Any], source: Path | str) -> dict[str, Any]:
    """What moved between a previous assessment (a JSON report object) and this one."""
    prev_dims = {str(d["id"]): d for d in previous["dimensions"]}
    dimensions = []
    for d in a.dimensions:
        p = prev_dims.get(d.id)
        before = p.get("score") if p else None
        before = before if isinstance(before, (int, float)) and not isinstance(before, bool) else None
        dimensions.append({"id": d.id, "name": DIMENSIONS.get(d.id, d.name), "before": before, "after": d.score,
                           "delta": None if before is None else round(d.score - before),
                           "status_before": p.get("status") if p else None, "status_after": d.status})
    prev_findings = {str(f["check"]): f for f in previous["findings"]}
    now = {f.check: f for f in a.findings}
    new, fixed, changed, quiet = [], [], [], []
    for check in sorted(set(prev_findings) | set(now)):
        before = prev_findings[check]["status"] if check in prev_findings else None
        f = now.get(check)
        after = f.status if f is not None else None
        if before == after:
            continue
        info = ({"title": f.title, "dimension": f.dimension, "severity": f.severity} if f is not None
                else prev_findings[check])
        item = _finding_change(check, before, after, info)
        if None in (before, after) and {before, after} <= {None, "pass", "not_applicable"}:
            quiet.append(check)  # a check added to (or retired from) Forge with nothing to report: not a move
        elif after in OPEN and before not in OPEN:
            new.append(item)
        elif before in OPEN and after in ("pass", "not_applicable"):
            fixed.append(item)
        else:
            changed.append(item)
    prev_score = previous["score"]
    return {
        "source": str(source), "matched": True,
        "file": str(previous.get("file", "")), "deployment": previous["deployment"],
        "as_of": str(previous.get("as_of", "")), "forge_version": str(previous.get("forge_version", "")),
        "score": {"before": prev_score, "after": a.score, "delta": round(a.score - prev_score)},
        "verdict": {"before": previous["verdict"], "after": a.verdict, "changed": previous["verdict"] != a.verdict},
        "dimensions": dimensions,
        "findings": {"new": new, "fixed": fixed, "changed": changed},
        "checks_quiet": quiet,
    }
