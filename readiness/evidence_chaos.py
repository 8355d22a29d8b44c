"""Chaos journals as readiness evidence: read, validate and summarize the game days a deployment has run.

A journal is what `forge chaos run EXPERIMENT --journal out.json` writes (chaos/journal.py): Chaos Toolkit's
`journal.json` shape — so a Chaos Toolkit journal is read too — plus Forge's `measurements` and `load`. What
readiness reads from it:

- the drill's kind: one of `KINDS` among `experiment.tags`;
- `status` (completed | failed | aborted | interrupted), `deviated`, `start`, `end` (ISO-8601; naive = UTC);
- `measurements` (seconds and counts; null = not measured): detection_seconds, recovery_seconds, drain_seconds,
  rollback_seconds, stall_seconds, lost_requests, lost_requests_with_drain, lost_requests_without_drain,
  in_flight_at_fault, promoted;
- `load`: request outcome counts (lost_requests is derived from them when a journal does not state it).

A drill *passed* when its status is `completed` and the steady state held afterwards (`deviated` false).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from forge.errors import InputError

EVIDENCE_FORMAT = "forge.chaos.evidence/v1"
KINDS = ("engine-hang", "collective-hang", "gpu-fault", "spot-interruption", "bad-canary", "good-canary")
STATUSES = ("completed", "failed", "aborted", "interrupted")
SECONDS = ("detection_seconds", "recovery_seconds", "drain_seconds", "rollback_seconds", "stall_seconds")
COUNTS = ("lost_requests", "lost_requests_with_drain", "lost_requests_without_drain", "in_flight_at_fault")
# Outcomes of forge load that are not a loss: served, or cancelled by the experiment's own stop-load rollback.
NOT_LOST = ("ok", "cancelled")
_FIX = "give a journal written by `forge chaos run EXPERIMENT --journal FILE` (or Chaos Toolkit's journal.json)"


def passed(record: dict[str, Any]) -> bool:
    return record["status"] == "completed" and not record["deviated"]


def concluded(record: dict[str, Any]) -> bool:
    """The drill ran to a verdict (completed or failed), rather than being aborted or interrupted on the way."""
    return record["status"] in ("completed", "failed")


def age_days(record: dict[str, Any], as_of: dt.date) -> int | None:
    """Whole days from the drill's end (its start if it never ended) to the assessment date. Journals are dated in
    UTC and as_of is a local date, so a journal one day "after" as_of was written today somewhere: it counts as 0."""
    when = record["end"] or record["start"]
    if when is None:
        return None
    days = (as_of - dt.date.fromisoformat(when[:10])).days
    return 0 if days == -1 else days


def outcome_text(record: dict[str, Any]) -> str:
    """Why a drill did not pass, in a few words."""
    if passed(record):
        return "passed"
    why = f"status {record['status']}" + (", steady state not restored (deviated)" if record["deviated"] else "")
    return why + (f"; {record['failed_activity']}" if record["failed_activity"] else "")


def brief(record: dict[str, Any], as_of: dt.date) -> dict[str, Any]:
    """What a finding shows of a journal: file, kind, outcome, age and what was measured."""
    return {"journal": record["path"], "kind": record["kind"], "status": record["status"],
            "deviated": record["deviated"], "passed": record["passed"], "end": record["end"] or record["start"],
            "age_days": age_days(record, as_of),
            **{k: v for k, v in record["measurements"].items() if v is not None}}


def _when(value: Any, key: str, path: Path) -> str | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{path}: {key} {value!r} is not an ISO-8601 time — a journal's start and end look like "
                         "2026-11-23T13:37:42+00:00") from None
    # Chaos Toolkit writes naive timestamps in UTC. Normalized to UTC, the ISO strings sort in time order.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat()


def _number(value: Any, key: str, path: Path, integer: bool) -> float | int | None:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if ok and integer and float(value).is_integer():
        return int(value)
    if ok and not integer:
        return float(value)
    kind = "a whole number ≥ 0" if integer else "a number of seconds ≥ 0"
    raise InputError(f"{path}: measurements.{key} {value!r} is not {kind} or null — fix the journal or run the "
                     "experiment again")


def read_journal(path: str | Path) -> dict[str, Any]:
    """Read and validate one journal; every problem is an InputError with one line naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file — {_FIX}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file — {_FIX}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}) — {_FIX}") from None
    if not isinstance(data, dict) or not isinstance(data.get("experiment"), dict) or "status" not in data:
        raise InputError(f"{path}: not a chaos journal (no experiment and status) — {_FIX}")
    status = data["status"]
    if status not in STATUSES:
        raise InputError(f"{path}: status {status!r} is not a journal status — use one of {', '.join(STATUSES)}")
    experiment = data["experiment"]
    tags = experiment.get("tags") or []
    if not isinstance(tags, list):
        raise InputError(f"{path}: experiment.tags is not a list — tag the experiment with its kind "
                         f"({', '.join(KINDS)})")
    kinds = [t for t in tags if t in KINDS]
    if len(kinds) != 1:
        found = "names no drill kind" if not kinds else f"names {len(kinds)} drill kinds ({', '.join(kinds)})"
        raise InputError(f"{path}: experiment.tags {found} — tag the experiment with exactly one of "
                         f"{', '.join(KINDS)}")
    if not isinstance(data.get("deviated", False), bool):
        raise InputError(f"{path}: deviated {data['deviated']!r} is not true or false — fix the journal")
    raw = data.get("measurements") or {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: measurements is not a mapping — {_FIX}")
    measurements: dict[str, Any] = {k: _number(raw.get(k), k, path, integer=False) for k in SECONDS}
    measurements |= {k: _number(raw.get(k), k, path, integer=True) for k in COUNTS}
    promoted = raw.get("promoted")
    if promoted is not None and not isinstance(promoted, bool):
        raise InputError(f"{path}: measurements.promoted {promoted!r} is not true, false or null — fix the journal")
    measurements["promoted"] = promoted
    load = data.get("load") or {}
    outcomes = load.get("outcomes") if isinstance(load, dict) else None
    if outcomes is not None and not (isinstance(outcomes, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in outcomes.values())):
        raise InputError(f"{path}: load.outcomes is not a mapping of outcome to count — fix the journal")
    outcomes = dict(outcomes or {})
    lost_from_load = False
    if measurements["lost_requests"] is None and outcomes:
        measurements["lost_requests"] = sum(n for k, n in outcomes.items() if k not in NOT_LOST)
        lost_from_load = True
    failed = next((a for a in data.get("run") or [] if isinstance(a, dict) and a.get("status") == "failed"), None)
    failed_activity = None
    if failed is not None:
        name = (failed.get("activity") or {}).get("name", "?")
        exception = failed.get("exception") or "failed"
        if isinstance(exception, list):  # Chaos Toolkit keeps the traceback's lines; the last one names the error
            exception = next((str(line).strip() for line in reversed(exception) if str(line).strip()), "failed")
        failed_activity = f"{name}: {str(exception).strip().splitlines()[-1][:200]}"
    record = {
        "format": EVIDENCE_FORMAT, "path": str(path), "kind": kinds[0], "title": str(experiment.get("title") or ""),
        "status": status, "deviated": bool(data.get("deviated")), "passed": False,
        "start": _when(data.get("start"), "start", path), "end": _when(data.get("end"), "end", path),
        "measurements": measurements, "outcomes": outcomes, "failed_activity": failed_activity,
        "lost_from_load": lost_from_load, "notes": [str(n) for n in data.get("notes") or []],
    }
    record["passed"] = passed(record)
    return record


class ChaosEvidence(NamedTuple):
    """Every journal of a deployment that could be read (records of `read_journal`), and one line per journal that
    could not — a (records, errors) pair like CheckContext.load_evidence."""

    journals: list[dict[str, Any]]
    errors: list[str]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """This kind's journals, newest first (an undated journal counts as oldest)."""
        return sorted((j for j in self.journals if j["kind"] == kind), key=lambda j: j["end"] or j["start"] or "",
                      reverse=True)

    def latest(self, kind: str) -> dict[str, Any] | None:
        """The drill of a kind that decides: the newest one that ran to a verdict (an old failure that was re-run
        and passed since is history; a run aborted or interrupted on the way proves nothing either way), else the
        newest of any status."""
        found = self.of_kind(kind)
        return next((j for j in found if concluded(j)), found[0] if found else None)

    @property
    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.of_kind(k)]


def read_chaos_evidence(names: list[str], base_dir: Path) -> ChaosEvidence:
    """Journals named in evidence.chaos_journals, relative to the deploy file (absolute paths stay as they are)."""
    evidence = ChaosEvidence([], [])
    for name in names:
        try:
            evidence.journals.append(read_journal(base_dir / name))
        except InputError as exc:
            evidence.errors.extend(exc.messages)
    return evidence
