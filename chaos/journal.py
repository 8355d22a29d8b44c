"""Experiment journals in Chaos Toolkit's `journal.json` shape, plus Forge's measurements.

Chaos Toolkit's fields are kept so its tooling (e.g. chaostoolkit-reporting) can read a Forge journal: `status`
(completed | failed | aborted | interrupted), `deviated`, `steady_states` {before, after} each with
`steady_state_met` and `probes`, `run` and `rollbacks` (each activity with `activity`, `start`, `end`,
`duration`, `status` succeeded | failed, `output`), `start`, `end`, `duration`. Forge adds `measurements`
(detection_seconds, drain_seconds, recovery_seconds, lost_requests, ...) and `load` (request outcome counts),
which readiness checks read as evidence (readiness/evidence_chaos.py).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge import __version__

JOURNAL_STATUSES = ("completed", "failed", "aborted", "interrupted")
ACTIVITY_STATUSES = ("succeeded", "failed")
JOURNAL_FORMAT = "forge.chaos.journal/1"


def timestamp() -> str:
    # Chaos Toolkit writes naive ISO-8601 timestamps; ours are UTC and say so.
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass
class ActivityRecord:
    activity: dict[str, Any]
    start: str
    end: str
    duration: float
    status: str
    output: Any = None
    exception: str | None = None
    tolerance_met: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        record = {"activity": self.activity, "start": self.start, "end": self.end,
                  "duration": round(self.duration, 4), "status": self.status, "output": self.output}
        if self.exception is not None:
            record["exception"] = self.exception
        if self.tolerance_met is not None:
            record["tolerance_met"] = self.tolerance_met
        return record


def record_activity(activity: dict[str, Any], call: Callable[[], Any]) -> ActivityRecord:
    """Run one activity and record it; an exception becomes status 'failed' with its one-line text.

    KeyboardInterrupt is not caught: the runner turns it into an interrupted journal after the rollbacks.
    """
    start, started = timestamp(), time.monotonic()
    try:
        output, status, error = call(), "succeeded", None
    except Exception as exc:
        output, status, error = None, "failed", f"{type(exc).__name__}: {exc}"
    return ActivityRecord(activity, start, timestamp(), time.monotonic() - started, status, output, error)


@dataclass
class Journal:
    experiment: dict[str, Any]
    start: str = field(default_factory=timestamp)
    status: str = "completed"
    deviated: bool = False
    steady_states: dict[str, Any] = field(default_factory=lambda: {"before": None, "after": None, "during": []})
    run: list[ActivityRecord] = field(default_factory=list)
    rollbacks: list[ActivityRecord] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    end: str | None = None
    _started: float = field(default_factory=time.monotonic, repr=False)
    duration: float | None = None

    def set_steady_state(self, phase: str, probes: list[ActivityRecord]) -> bool:
        met = all(p.tolerance_met for p in probes)
        self.steady_states[phase] = {"steady_state_met": met, "probes": [p.as_dict() for p in probes]}
        return met

    def finish(self, status: str) -> None:
        if status not in JOURNAL_STATUSES:
            raise ValueError(f"journal status {status!r}: use one of {', '.join(JOURNAL_STATUSES)}")
        self.status = status
        self.end = timestamp()
        self.duration = round(time.monotonic() - self._started, 3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chaoslib-version": None,  # not run by chaostoolkit-lib; `forge` names the producer
            "forge": {"version": __version__, "format": JOURNAL_FORMAT},
            "platform": platform.platform(),
            "node": platform.node(),
            "experiment": self.experiment,
            "start": self.start,
            "status": self.status,
            "deviated": self.deviated,
            "steady_states": self.steady_states,
            "run": [a.as_dict() for a in self.run],
            "rollbacks": [a.as_dict() for a in self.rollbacks],
            "end": self.end,
            "duration": self.duration,
            "measurements": self._measurements(),
            "load": self.load,
            "notes": self.notes,
        }

    def _measurements(self) -> dict[str, Any]:
        """The measurements, with lost_requests derived from the load when the experiment did not count it itself:
        every request neither served nor cancelled by the experiment's own stop-load rollback."""
        outcomes = self.load.get("outcomes") if isinstance(self.load, dict) else None
        if "lost_requests" in self.measurements or not isinstance(outcomes, dict):
            return self.measurements
        lost = sum(n for outcome, n in outcomes.items() if outcome not in ("ok", "cancelled"))
        return {**self.measurements, "lost_requests": lost}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")
        tmp.replace(path)  # a reader never sees half a journal
