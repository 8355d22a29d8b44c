"""Trace replay: recorded arrivals with their prompt and output lengths.

Two formats:
- the public Azure LLM inference trace CSV: header ``TIMESTAMP,ContextTokens,GeneratedTokens``, TIMESTAMP either a
  datetime (``2023-11-16 18:15:46.6805900``, any fraction length) or seconds; lines starting with ``#`` are comments;
- Forge's JSONL: one object per line, ``{"timestamp_s": 0.25, "prompt_tokens": 812, "output_tokens": 64}``.

Offsets are relative to the first entry of the file. A window (trace seconds) is cut first, then the speed-up divides
what is left, so ``--trace-window 60:120 --speedup 3`` replays that minute in 20 s.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from forge.errors import InputError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class TraceEntry:
    offset_s: float
    prompt_tokens: int
    output_tokens: int


def _parse_timestamp(text: str, where: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Python's parser takes at most 6 fractional digits; the Azure trace has 7.
    head, dot, frac = text.partition(".")
    normalized = head + (dot + frac[:6] if dot else "")
    try:
        stamp = dt.datetime.fromisoformat(normalized)
    except ValueError:
        raise InputError(f"{where}: TIMESTAMP {text!r} is neither seconds nor a datetime like "
                         "'2023-11-16 18:15:46.6805900' — fix the trace") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp()


def _positive_int(value: object, name: str, where: str) -> int:
    try:
        number = int(float(str(value)))
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not a whole number — fix the trace") from None
    if number < 0:
        raise InputError(f"{where}: {name} {number} is negative — fix the trace")
    return number


def _read_azure_csv(path: Path) -> list[tuple[float, int, int]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(lines)
    missing = [c for c in AZURE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: trace CSV lacks column(s) {', '.join(missing)} — the Azure LLM inference trace "
                         f"schema is {','.join(AZURE_COLUMNS)}")
    rows = []
    for number, row in enumerate(reader, start=2):
        where = f"{path}:row {number}"
        rows.append((_parse_timestamp(row["TIMESTAMP"], where),
                     _positive_int(row["ContextTokens"], "ContextTokens", where),
                     _positive_int(row["GeneratedTokens"], "GeneratedTokens", where)))
    return rows


def _read_jsonl(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg}) — one object per line") from None
        missing = [k for k in ("timestamp_s", "prompt_tokens", "output_tokens") if k not in obj]
        if missing:
            raise InputError(f"{where}: lacks {', '.join(missing)} — each line is "
                             '{"timestamp_s": ..., "prompt_tokens": ..., "output_tokens": ...}')
        rows.append((_parse_timestamp(str(obj["timestamp_s"]), where),
                     _positive_int(obj["prompt_tokens"], "prompt_tokens", where),
                     _positive_int(obj["output_tokens"], "output_tokens", where)))
    return rows


def load_trace(path: Path, *, speedup: float = 1.0, window: tuple[float, float] | None = None) -> list[TraceEntry]:
    """Entries sorted by time, offsets from the trace's first entry (or the window's start), divided by speedup."""
    if not path.is_file():
        raise InputError(f"--trace {path}: no such file — give an Azure-schema CSV or a Forge trace JSONL")
    if speedup <= 0:
        raise InputError(f"--speedup {speedup}: must be > 0 (3 replays three times faster)")
    rows = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else _read_azure_csv(path)
    if not rows:
        raise InputError(f"--trace {path}: has no requests")
    rows.sort(key=lambda r: r[0])
    origin = rows[0][0]
    start, end = window if window else (0.0, float("inf"))
    entries = [TraceEntry((t - origin - start) / speedup, max(1, p), max(1, o))
               for t, p, o in rows if start <= t - origin < end]
    if not entries:
        raise InputError(f"--trace-window {start:g}:{end:g}: no requests of {path} fall in it "
                         f"(the trace spans 0:{rows[-1][0] - origin:.3f} s)")
    return entries
