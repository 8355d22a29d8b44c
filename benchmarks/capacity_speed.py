"""Plan time of the capacity & cost model: 100 distinct example deployments, cold, then 1,000 files of a fleet.

Goal (issue 4): all growth multipliers of one deploy.yaml in well under 2 s; readiness wants ~0.3 s cold, and a
1,000-file fleet in 10 s, where many files share a shape (the model caches simulations per distinct shape).
Run: .venv/bin/python benchmarks/capacity_speed.py
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

from forge.loader import load
from forge.readiness import capacity
from forge.schema import Deployment

ROOT = Path(__file__).resolve().parents[1]


def _variants(count: int) -> list[Deployment]:
    """Distinct deployments: each example with its traffic scaled, so no two share a simulated shape."""
    bases = [load(p).raw for p in sorted((ROOT / "readiness" / "examples").glob("*.yaml"))]
    bases = [b for b in bases if b.get("traffic", {}).get("prompt_tokens") and b["model"].get("architecture")]
    out = []
    for i in range(count):
        raw = copy.deepcopy(bases[i % len(bases)])
        for key in ("prompt_tokens", "output_tokens"):
            shape = raw["traffic"][key]
            raw["traffic"][key] = {k: int(v * (1 + 0.01 * i)) for k, v in shape.items()}
        out.append(Deployment.model_validate(raw))
    return out


def _clear_caches() -> None:
    for cached in (capacity.make_workload, capacity.replica_capacity, capacity._simulate_cached):
        cached.cache_clear()


def main() -> None:
    deployments = _variants(100)
    _clear_caches()
    times = []
    for d in deployments:
        start = time.perf_counter()
        capacity.estimate(d)
        times.append(time.perf_counter() - start)
    total = sum(times)
    print(f"100 distinct deployments, cold: total {total:.2f} s, median {statistics.median(times) * 1000:.0f} ms, "
          f"p95 {sorted(times)[94] * 1000:.0f} ms, max {max(times) * 1000:.0f} ms per deploy (all multipliers)")
    fleet = [deployments[i % 100] for i in range(1000)]
    _clear_caches()
    start = time.perf_counter()
    for d in fleet:
        capacity.estimate(d)
    elapsed = time.perf_counter() - start
    print(f"1,000-file fleet (100 distinct shapes): {elapsed:.2f} s total, {elapsed:.2f}/10 s goal = "
          f"{elapsed / 10:.0%} of budget")


if __name__ == "__main__":
    main()
