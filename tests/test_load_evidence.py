"""Evidence import: Forge's own results and the real output schemas of vLLM, GuideLLM and AIPerf (fixtures cite their
sources in tests/fixtures/load/README.md) normalize into one record, in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forge.errors import InputError
from forge.load.cli import app
from forge.load.evidence import load_evidence

FIXTURES = Path(__file__).parent / "fixtures" / "load"
KEYS = {"format", "source", "path", "shape", "throughput", "percentiles_s", "goodput", "outcomes", "notes"}


def test_vllm_bench_serve_result():
    record = load_evidence(FIXTURES / "vllm_bench_serve.json")
    assert set(record) == KEYS and record["source"] == "vllm_bench_serve"
    assert record["shape"]["requests"] == 200 and record["shape"]["request_rate"] == 8.0
    assert record["shape"]["arrival"] == "poisson"
    assert record["shape"]["prompt_tokens_mean"] == pytest.approx(50176 / 196)
    assert record["throughput"]["requests_per_s"] == pytest.approx(7.65625)
    assert record["throughput"]["input_tokens_per_s"] == pytest.approx(50176 / 25.6)
    assert record["percentiles_s"]["ttft"]["p99"] == pytest.approx(0.1204)  # 120.4 ms
    assert record["percentiles_s"]["itl"]["p95"] == pytest.approx(0.024)
    assert record["percentiles_s"]["e2e"]["mean"] == pytest.approx(0.8003)
    assert record["goodput"]["requests_per_s"] == 7.0
    assert record["goodput"]["fraction"] == pytest.approx(7.0 * 25.6 / 200)
    assert record["outcomes"] == {"ok": 196, "failed": 4}


def test_guidellm_report():
    record = load_evidence(FIXTURES / "guidellm_benchmarks.json")
    assert record["source"] == "guidellm"
    assert record["shape"]["requests"] == 125 and record["shape"]["duration_s"] == 30.0
    assert record["shape"]["arrival"] == "poisson" and record["shape"]["request_rate"] == 4.0
    assert record["percentiles_s"]["ttft"]["p95"] == pytest.approx(0.095)
    # GuideLLM's per-request inter_token_latency_ms is Forge's TPOT; no pooled ITL is claimed.
    assert record["percentiles_s"]["tpot"]["p99"] == pytest.approx(0.023)
    assert record["percentiles_s"]["itl"]["p95"] is None
    assert record["percentiles_s"]["e2e"]["p90"] == pytest.approx(1.2)  # request_latency is in seconds
    assert record["outcomes"]["ok"] == 120 and record["outcomes"]["failed"] == 5
    assert record["outcomes"]["unaccounted"] == 0  # created_requests == the report's total
    with pytest.raises(InputError, match="out of range"):
        load_evidence(FIXTURES / "guidellm_benchmarks.json", benchmark_index=3)


def test_guidellm_0_8_1_real_report(tmp_path):
    """A real GuideLLM 0.8.1 report (tests/fixtures/load/README.md says how it was made): report metadata version 2,
    no "args" key, the run's scenario under "config", 6 requests of which the report holds 5."""
    path = FIXTURES / "guidellm_0.8.1_benchmarks.json"
    data = json.loads(path.read_text())
    assert "args" not in data and data["metadata"]["guidellm_version"] == "0.8.1"
    bench = data["benchmarks"][0]
    record = load_evidence(path)
    assert set(record) == KEYS and record["source"] == "guidellm"
    assert record["shape"]["arrival"] == "poisson" and record["shape"]["request_rate"] == 4.0
    # The strategy's max_concurrency is GuideLLM's resolved default, not a limit the run set.
    assert bench["config"]["strategy"]["max_concurrency"] == 10240 and record["shape"]["max_concurrency"] is None
    # Figures agree with the report's own per-request records.
    successful = bench["requests"]["successful"]
    assert record["percentiles_s"]["ttft"]["mean"] == pytest.approx(
        sum(r["time_to_first_token_ms"] for r in successful) / len(successful) / 1000)
    assert record["percentiles_s"]["e2e"]["mean"] == pytest.approx(
        sum(r["request_latency"] for r in successful) / len(successful))
    assert any(record["percentiles_s"]["ttft"]["p50"] * 1000 == pytest.approx(r["time_to_first_token_ms"])
               for r in successful)
    assert record["shape"]["duration_s"] == pytest.approx(bench["duration"])
    # Every request accounted for: 4 ok, 1 refused by the simulator (HTTP 400: prompt + max_tokens over
    # --max-model-len), and 1 that GuideLLM created but recorded in no status of its report.
    assert "400 Bad Request" in bench["requests"]["errored"][0]["info"]["error"]
    assert bench["scheduler_state"]["created_requests"] == 6 and bench["metrics"]["request_totals"]["total"] == 5
    assert record["outcomes"] == {"ok": 4, "failed": 2, "incomplete": 0, "errored": 1, "unaccounted": 1}
    assert record["shape"]["requests"] == 6 == record["outcomes"]["ok"] + record["outcomes"]["failed"]
    assert any("created 6 requests; its report holds 5" in note for note in record["notes"])
    # Goodput as GuideLLM computed it against the run's SLO (--metrics slo=...).
    assert record["goodput"]["fraction"] == pytest.approx(0.8) and record["goodput"]["slo"]["ttft_ms"] == 200.0
    assert record["goodput"]["requests_per_s"] == pytest.approx(bench["metrics"]["request_goodput"]["successful"]["mean"])
    # Recognised by its benchmarks alone too (a report stripped of metadata), and through the CLI.
    del data["metadata"]
    stripped = tmp_path / "benchmarks.json"
    stripped.write_text(json.dumps(data))
    assert load_evidence(stripped)["outcomes"] == record["outcomes"]
    result = CliRunner().invoke(app, ["evidence", str(path)])
    assert result.exit_code == 0 and json.loads(result.output)["shape"]["requests"] == 6


def test_aiperf_profile_export_current_layout():
    record = load_evidence(FIXTURES / "aiperf_profile_export.json")
    assert record["source"] == "aiperf"
    assert record["shape"]["requests"] == 180 and record["shape"]["request_rate"] == 6.0
    assert record["percentiles_s"]["ttft"]["p95"] == pytest.approx(0.082)
    assert record["percentiles_s"]["itl"]["p99"] == pytest.approx(0.046)   # inter_chunk_latency: pooled
    assert record["percentiles_s"]["tpot"]["p50"] == pytest.approx(0.0126)  # inter_token_latency: per request
    assert record["throughput"]["input_tokens_per_s"] == pytest.approx(44800 / 30.5)
    assert record["goodput"]["requests_per_s"] == pytest.approx(4.918)
    assert record["goodput"]["fraction"] == pytest.approx(150 / 180)
    assert record["outcomes"]["failed"] == 5 and record["outcomes"]["errors"][0]["code"] == 500


def test_aiperf_profile_export_records_layout():
    record = load_evidence(FIXTURES / "aiperf_profile_export_records.json")
    assert record["source"] == "aiperf"
    assert record["percentiles_s"]["ttft"]["p50"] == pytest.approx(0.2369)  # short tag "ttft"
    assert record["shape"]["max_concurrency"] == 8 and record["goodput"] is None


def test_forge_results_and_summary_agree(tmp_path):
    from_results = load_evidence(FIXTURES / "handmade_results.jsonl",
                                 slo={"ttft_p95_seconds": 0.5, "itl_p95_seconds": 0.05})
    assert from_results["source"] == "forge"
    assert from_results["outcomes"]["ok"] == 4 and from_results["outcomes"]["failed"] == 2
    assert from_results["goodput"]["requests_per_s"] == pytest.approx(0.5)
    assert from_results["percentiles_s"]["ttft"]["p95"] == pytest.approx(0.555)
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["summarize", str(FIXTURES / "handmade_results.jsonl"),
                                      "--deploy", str(FIXTURES / "deploy_slo.yaml"), "--summary-json", str(summary)])
    assert result.exit_code == 0, result.output
    from_summary = load_evidence(summary)
    assert from_summary["percentiles_s"] == from_results["percentiles_s"]
    assert from_summary["throughput"] == from_results["throughput"]


def test_evidence_command_prints_the_record_and_rejects_unknown_files(tmp_path):
    result = CliRunner().invoke(app, ["evidence", str(FIXTURES / "vllm_bench_serve.json")])
    assert result.exit_code == 0 and json.loads(result.output)["source"] == "vllm_bench_serve"
    unknown = tmp_path / "other.json"
    unknown.write_text('{"hello": 1}')
    result = CliRunner().invoke(app, ["evidence", str(unknown)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "unrecognised results format" in result.output
    result = CliRunner().invoke(app, ["evidence", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "no such file" in result.output
