"""The summary of a load run, computed from its per-request records (results.jsonl). Definitions: docs/load.md.

- TTFT: send -> first token event, per ok request.  E2E: send -> completion, per ok request.
- ITL: every inter-token gap of every ok request, pooled (a request with n token events adds n-1 gaps).
- TPOT: per ok request with more than one output token, (E2E - TTFT) / (tokens_out - 1).
- Throughput: ok requests, their prompt tokens and output tokens, divided by the measured window (first send to last
  completion of any request).
- Goodput: ok requests with TTFT <= slo.ttft_p95_seconds, TPOT <= slo.itl_p95_seconds and E2E <= slo.e2e_p95_seconds
  (each only where the SLO sets it), per second of the window. The per-request test follows vLLM's goodput; whether
  the run as a whole meets each SLO at p95 is reported beside it (``slo_p95_met``).
- Percentiles interpolate linearly between closest ranks (numpy's default method).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from forge.errors import InputError

SUMMARY_FORMAT = "forge.load.summary/v1"
PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; sorted_values must be sorted and non-empty."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low))


def distribution(values: Iterable[float]) -> dict[str, float | int | None]:
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return {"count": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    return {"count": len(ordered), "mean": sum(ordered) / len(ordered),
            **{f"p{q}": percentile(ordered, q) for q in PERCENTILES}, "max": float(ordered[-1])}


def tpot(record: dict) -> float | None:
    out = record.get("tokens_out") or 0
    if record.get("outcome") != "ok" or out < 2 or record.get("e2e_s") is None or record.get("ttft_s") is None:
        return None
    return (record["e2e_s"] - record["ttft_s"]) / (out - 1)


def slo_dict(slo: Any) -> dict[str, float]:
    """The SLO thresholds a goodput test uses, from forge.schema.SLO (or a plain dict of the same keys)."""
    if slo is None:
        return {}
    raw = slo if isinstance(slo, dict) else slo.model_dump()
    return {k: float(raw[k]) for k in ("ttft_p95_seconds", "itl_p95_seconds", "e2e_p95_seconds") if raw.get(k)}


def is_good(record: dict, slo: dict[str, float]) -> bool:
    if record.get("outcome") != "ok":
        return False
    if "ttft_p95_seconds" in slo and (record.get("ttft_s") is None or record["ttft_s"] > slo["ttft_p95_seconds"]):
        return False
    if "itl_p95_seconds" in slo:
        per_token = tpot(record)
        if per_token is not None and per_token > slo["itl_p95_seconds"]:
            return False
    if "e2e_p95_seconds" in slo and (record.get("e2e_s") is None or record["e2e_s"] > slo["e2e_p95_seconds"]):
        return False
    return True


def summarize(records: list[dict], *, scheduled: int | None = None, slo: Any = None,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:
    # Imported here: forge.load.client brings aiohttp (~0.4 s), which readiness checks reading results don't need.
    from forge.load.client import OUTCOMES

    scheduled = len(records) if scheduled is None else scheduled
    outcomes = Counter(r.get("outcome", "unknown") for r in records)
    statuses = Counter(str(r["status"]) for r in records if r.get("outcome") == "http_error" and r.get("status"))
    ok = [r for r in records if r.get("outcome") == "ok"]
    sent = [r for r in records if r.get("sent_s") is not None]
    if sent:
        window_start = min(r["sent_s"] for r in sent)
        window_end = max(r["sent_s"] + (r.get("e2e_s") or 0.0) for r in sent)
        duration = max(window_end - window_start, 1e-9)
    else:
        duration = 0.0

    def per_second(amount: float) -> float | None:
        return amount / duration if duration > 0 else None

    tokens_in = sum(r.get("tokens_in") or 0 for r in ok)
    tokens_out = sum(r.get("tokens_out") or 0 for r in ok)
    thresholds = slo_dict(slo)
    goodput = None
    if thresholds:
        good = sum(1 for r in records if is_good(r, thresholds))
        ttft_dist = distribution(r.get("ttft_s") for r in ok)
        itl_dist = distribution(gap for r in ok for gap in r.get("itl_s") or ())
        e2e_dist = distribution(r.get("e2e_s") for r in ok)
        met: dict[str, bool | None] = {}
        for key, dist in (("ttft_p95_seconds", ttft_dist), ("itl_p95_seconds", itl_dist),
                          ("e2e_p95_seconds", e2e_dist)):
            if key in thresholds:
                met[key] = None if dist["p95"] is None else dist["p95"] <= thresholds[key]
        goodput = {"slo": thresholds, "good_requests": good, "requests_per_s": per_second(good),
                   "fraction_of_scheduled": good / scheduled if scheduled else None, "slo_p95_met": met}
    with_usage = [r for r in ok if r.get("tokens_in") is not None]
    exact = sum(1 for r in with_usage if r["tokens_in"] == r.get("prompt_tokens_target"))
    return {
        "format": SUMMARY_FORMAT,
        **({"meta": meta} if meta else {}),
        "requests": {
            "scheduled": scheduled,
            "recorded": len(records),
            "accounted": len(records) == scheduled and len({r.get("index") for r in records}) == len(records),
            "outcomes": {name: outcomes.get(name, 0) for name in OUTCOMES}
                        | {k: v for k, v in outcomes.items() if k not in OUTCOMES},
            "http_status": dict(sorted(statuses.items())),
        },
        "duration_s": duration,
        "throughput": {"requests_per_s": per_second(len(ok)), "input_tokens_per_s": per_second(tokens_in),
                       "output_tokens_per_s": per_second(tokens_out)},
        "totals": {"tokens_in": tokens_in, "tokens_out": tokens_out},
        "latency_s": {
            "ttft": distribution(r.get("ttft_s") for r in ok),
            "itl": distribution(gap for r in ok for gap in r.get("itl_s") or ()),
            "tpot": distribution(tpot(r) for r in ok),
            "e2e": distribution(r.get("e2e_s") for r in ok),
        },
        "schedule_lag_s": distribution(r.get("schedule_lag_s") for r in sent),
        "goodput": goodput,
        "prompt_tokens": {"target_mean": (sum(r.get("prompt_tokens_target") or 0 for r in records) / len(records))
                          if records else None,
                          "usage_reported": len(with_usage),
                          "exact_fraction": exact / len(with_usage) if with_usage else None},
    }


def read_results(path: Path) -> list[dict]:
    """Records of a results.jsonl; a truncated last line (a killed run) is skipped, any other bad line is an error."""
    if not path.is_file():
        raise InputError(f"{path}: no such file — give a results.jsonl written by `forge load run`")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # the run was killed mid-write; everything before it is intact
            raise InputError(f"{path}:{number}: not JSON ({exc.msg}) — results.jsonl has one object per line") from None
    return records
