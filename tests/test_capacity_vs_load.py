"""PERF-013: the capacity model's prediction for the very requests a replay measured, within 25 %, as evidence."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from forge.load.cli import app as load_app
from forge.readiness.assess import assess_file
from forge.readiness.capacity import CALIBRATION_TOLERANCE
from forge.reference_stack.simulator import serve
from forge.reference_stack.simulator.config import SimulatorConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> tuple[Path, float]:
    """Six seconds of the reference deployment's traffic shape replayed against one simulator replica, and the
    client-side overhead of a request on that simulator at that time (see `_transport_seconds`)."""
    out = tmp_path_factory.mktemp("replay") / "results.jsonl"
    with serve(port=0, in_subprocess=True) as url:
        result = CliRunner().invoke(load_app, ["run", "--no-progress", "--target", url, "--deploy",
                                               str(ROOT / "reference-stack" / "deploy.yaml"), "--rate", "4",
                                               "--duration", "6", "--out", str(out)])
        transport_s = _transport_seconds(url)
    assert result.exit_code in (0, 1), result.output
    return out, transport_s


def _transport_seconds(url: str, requests: int = 7) -> float:
    """What a client's TTFT holds beyond the engine's own work: HTTP, the API layer, the event loops of the
    simulator and the client — and whatever a busy host adds to them. Median over lone requests with distinct
    prompts (no prefix-cache hit) of client TTFT minus the one engine step the simulator plans for the prompt.
    Measured on a quiet 2-core machine: 3.1-3.4 ms, about a fifth of the replay's TTFT p50."""
    config = SimulatorConfig()  # what serve() runs
    overheads = []
    with httpx.Client(timeout=10, trust_env=False) as client:
        for i in range(requests):
            prompt = " ".join(f"probe{i}word{j}" for j in range(60))
            tokens = client.post(url + "/tokenize", json={"model": "tiny", "prompt": prompt}).json()["count"]
            assert tokens <= config.max_num_batched_tokens  # one prefill step
            engine_s = config.step_overhead_s + tokens * config.prefill_time_per_token_s
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 2, "stream": True}
            sent, first = time.perf_counter(), None
            with client.stream("POST", url + "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter()
            overheads.append(first - sent - engine_s)
    return statistics.median(overheads)


def _assess(tmp_path: Path, results: Path, **hardware):
    data = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text())
    data["hardware"].update(replicas={"min": 1, "max": 1}, **hardware)  # the replay hit one replica
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(results, tmp_path / "results.jsonl")
    a = assess_file(path, None, {"load_results": (tmp_path / "results.jsonl",)})
    return next(f for f in a.findings if f.check == "PERF-013")


def test_the_model_predicts_the_simulated_replay_within_25_percent(tmp_path, replay):
    results, transport_s = replay
    f = _assess(tmp_path, results)
    assert f.basis == "evidence", f.message
    # The model predicts the engine's TTFT; a client's also holds the transport, measured on this simulator in this
    # run. Without it the quiet-machine error is already about -22 %, and a busy host alone pushes it past 25 %.
    ttft = f.evidence["ttft_p50_seconds"]
    error = (ttft["predicted"] + transport_s) / ttft["measured"] - 1
    assert abs(error) <= CALIBRATION_TOLERANCE, (ttft, f"transport {transport_s * 1000:.2f} ms")
    for metric in ("itl_p50_seconds", "output_tokens_per_second"):
        assert abs(f.evidence[metric]["error_pct"]) <= 100 * CALIBRATION_TOLERANCE, (metric, f.evidence[metric])
    # PERF-013 itself grades the client's TTFT unadjusted; if anything is off, it is that and only that.
    assert f.status == "pass" or (f.status == "warn" and f.message.count(" predicted ") == 1
                                  and "ttft_p50_seconds" in f.message), f.message
    assert f.evidence["output_tokens_per_second"]["measured"] > 0


def test_a_deployment_that_claims_other_hardware_than_it_ran_on_is_a_finding(tmp_path, replay):
    # The same measurements graded as if they came from an H100: the model predicts far faster steps.
    f = _assess(tmp_path, replay[0], gpu="H100-SXM-80GB")
    assert (f.status, f.basis) == ("warn", "evidence"), f.message
    assert "off by more than 25 %" in f.message and "itl_p50_seconds" in f.message


def test_without_per_request_records_it_does_not_apply(tmp_path):
    data = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text())
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    a = assess_file(path, None, {"load_results": (ROOT / "tests" / "fixtures" / "load" / "vllm_bench_serve.json",)})
    assert next(f for f in a.findings if f.check == "PERF-013").status == "not_applicable"
