"""PERF-013: the capacity model's prediction for the very requests a replay measured, within 25 %, as evidence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forge.load.cli import app as load_app
from forge.readiness.assess import assess_file
from forge.reference_stack.simulator import serve

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    """Six seconds of the reference deployment's traffic shape replayed against one simulator replica."""
    out = tmp_path_factory.mktemp("replay") / "results.jsonl"
    with serve(port=0, in_subprocess=True) as url:
        result = CliRunner().invoke(load_app, ["run", "--no-progress", "--target", url, "--deploy",
                                               str(ROOT / "reference-stack" / "deploy.yaml"), "--rate", "4",
                                               "--duration", "6", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    return out


def _assess(tmp_path: Path, replay: Path, **hardware):
    data = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text())
    data["hardware"].update(replicas={"min": 1, "max": 1}, **hardware)  # the replay hit one replica
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(replay, tmp_path / "results.jsonl")
    a = assess_file(path, None, {"load_results": (tmp_path / "results.jsonl",)})
    return next(f for f in a.findings if f.check == "PERF-013")


def test_the_model_predicts_the_simulated_replay_within_25_percent(tmp_path, replay):
    f = _assess(tmp_path, replay)
    assert (f.status, f.basis) == ("pass", "evidence"), f.message
    assert abs(f.evidence["ttft_p50_seconds"]["error_pct"]) <= 25
    assert f.evidence["output_tokens_per_second"]["measured"] > 0


def test_a_deployment_that_claims_other_hardware_than_it_ran_on_is_a_finding(tmp_path, replay):
    # The same measurements graded as if they came from an H100: the model predicts far faster steps.
    f = _assess(tmp_path, replay, gpu="H100-SXM-80GB")
    assert (f.status, f.basis) == ("warn", "evidence"), f.message
    assert "off by more than 25 %" in f.message and "itl_p50_seconds" in f.message


def test_without_per_request_records_it_does_not_apply(tmp_path):
    data = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text())
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    a = assess_file(path, None, {"load_results": (ROOT / "tests" / "fixtures" / "load" / "vllm_bench_serve.json",)})
    assert next(f for f in a.findings if f.check == "PERF-013").status == "not_applicable"
