"""Arrival processes in the capacity model: gamma burstiness and trace replay need more replicas than smooth traffic."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forge.errors import InputError
from forge.loader import load
from forge.readiness.capacity import Demand, estimate, make_workload
from forge.readiness.capacity_cli import app
from forge.schema import Deployment

ROOT = Path(__file__).resolve().parents[1]


def _small_fleet(arrival: dict | None = None) -> dict:
    """The 70B FP8 example at 2 req/s p95 with a TTFT-bound SLO: a fleet small enough that bursts don't average out."""
    raw = copy.deepcopy(load(ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml").raw)
    raw["slo"]["ttft_p95_seconds"] = 0.5
    raw["traffic"]["requests_per_second"] = {"p50": 1, "p95": 2, "peak": 3}
    if arrival is not None:
        raw["traffic"]["arrival"] = arrival
    return raw


def _needed(raw: dict, base_dir: Path | None = None) -> list[int]:
    return [p.replicas_needed for p in estimate(Deployment.model_validate(raw), base_dir).growth]


def test_burstier_arrivals_need_more_replicas_for_the_same_slo():
    poisson = _needed(_small_fleet())
    cv2 = _needed(_small_fleet({"process": "gamma", "cv": 2.0}))
    cv4 = _needed(_small_fleet({"process": "gamma", "cv": 4.0}))
    # 1× and 3×; at 10× the fleet is large enough that each replica sees a nearly Poisson share, and clumped
    # prompts batch into fewer prefill steps, which can even lower ITL p95 (docs/capacity.md).
    for smooth, bursty, burstier in list(zip(poisson, cv2, cv4))[:2]:
        assert smooth <= bursty <= burstier
    assert cv4[0] >= poisson[0] + 2 and cv4[1] > poisson[1]


def test_gamma_with_cv_one_sizes_like_poisson():
    assert _needed(_small_fleet({"process": "gamma", "cv": 1.0})) == _needed(_small_fleet())


def test_bursts_thin_out_over_more_replicas():
    demand = Demand(make_workload((100, 200, 400), (50, 100, 200), 0.0, 16, 3.0), "gamma", cv=3.0,
                    shapes=((100, 200, 400), (50, 100, 200), 0.0, 16))
    # A random split of a renewal stream with gap CV c over N replicas: CV² = 1 + (c² − 1)/N.
    assert demand.per_replica_cv(1) == pytest.approx(3.0)
    assert demand.per_replica_cv(8) == pytest.approx(math.sqrt(2.0))
    gaps = [b - a for a, b in zip(demand.for_replicas(8).unit_arrivals, demand.for_replicas(8).unit_arrivals[1:])]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean
    assert 1.1 < cv < 1.8  # sampled: near √2, far from the fleet's 3


def _write_trace(path: Path, offsets: list[float]) -> None:
    rng = random.Random(7)
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"{t:.4f},{rng.randint(600, 1600)},{rng.randint(100, 300)}" for t in offsets]
    path.write_text("\n".join(lines) + "\n")


def test_trace_replay_sizes_bursty_traces_above_even_ones(tmp_path):
    # Two 600-request traces at the same mean rate (1 req/s of trace time): one evenly spaced, one in clumps of 12.
    _write_trace(tmp_path / "even.csv", [float(i) for i in range(600)])
    _write_trace(tmp_path / "bursty.csv", [12.0 * (i // 12) + 0.01 * (i % 12) for i in range(600)])
    even = _needed(_small_fleet({"process": "trace", "trace": "even.csv"}), tmp_path)
    bursty = _needed(_small_fleet({"process": "trace", "trace": "bursty.csv"}), tmp_path)
    assert bursty[0] > even[0] and bursty[1] >= even[1]


def test_trace_without_declared_rates_takes_its_own_rate_and_lengths(tmp_path):
    _write_trace(tmp_path / "t.csv", [0.5 * i for i in range(300)])  # 2 req/s
    raw = _small_fleet({"process": "trace", "trace": "t.csv"})
    for key in ("requests_per_second", "prompt_tokens", "output_tokens"):
        raw["traffic"].pop(key)
    est = estimate(Deployment.model_validate(raw), tmp_path)
    assert est.growth[0].requests_per_second == pytest.approx(2.0, rel=0.01)
    assert est.max_concurrent_sequences and est.growth[0].replicas_needed >= 1


def test_arrival_field_is_validated():
    with pytest.raises(Exception, match="process gamma needs cv"):
        Deployment.model_validate(_small_fleet({"process": "gamma"}))
    with pytest.raises(Exception, match="trace applies to process trace only"):
        Deployment.model_validate(_small_fleet({"process": "poisson", "trace": "x.csv"}))


def test_missing_trace_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="traffic.arrival.trace: .*missing.csv is not a file"):
        estimate(Deployment.model_validate(_small_fleet({"process": "trace", "trace": "missing.csv"})), tmp_path)
    (tmp_path / "deploy.yaml").write_text(
        (ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml").read_text().replace(
            "traffic:\n", "traffic:\n  arrival: {process: trace, trace: missing.csv}\n", 1))
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "deploy.yaml")])
    assert result.exit_code == 2 and "missing.csv is not a file" in result.output
    assert "Traceback" not in result.output
