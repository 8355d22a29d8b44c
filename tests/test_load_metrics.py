"""Summary arithmetic on a hand-made results file whose figures are worked out here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forge.load.cli import app
from forge.load.metrics import percentile, read_results, summarize
from forge.loader import load

FIXTURES = Path(__file__).parent / "fixtures" / "load"
HANDMADE = FIXTURES / "handmade_results.jsonl"
DEPLOY = FIXTURES / "deploy_slo.yaml"


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # between ranks 1 and 2
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([7.0], 99) == 7.0


def test_goodput_and_throughput_of_the_handmade_results():
    slo = load(DEPLOY).deployment.slo  # ttft 0.5 s, itl 0.05 s, e2e 2 s
    summary = summarize(read_results(HANDMADE), slo=slo)
    # Requests (see the fixture): 0 ok ttft 0.2, 11 tokens, e2e 0.7 -> TPOT (0.7-0.2)/10 = 0.05 <= 0.05: good.
    # 1 ok ttft 0.6 > 0.5: bad. 2 ok TPOT (0.5-0.1)/4 = 0.1 > 0.05: bad. 3 ok one token (no TPOT), ttft 0.3: good.
    # 4 http_error and 5 lost_mid_stream: bad. Good = 2.
    # Window: first send 0.0 to the last end, request 5 sent at 2.5 + 1.5 = 4.0 s.
    assert summary["duration_s"] == pytest.approx(4.0)
    assert summary["goodput"]["good_requests"] == 2
    assert summary["goodput"]["requests_per_s"] == pytest.approx(2 / 4.0)
    assert summary["goodput"]["fraction_of_scheduled"] == pytest.approx(2 / 6)
    # Throughput counts ok requests only: 4 of them; tokens in 100+100+50+20, out 11+2+5+1.
    assert summary["throughput"]["requests_per_s"] == pytest.approx(4 / 4.0)
    assert summary["throughput"]["input_tokens_per_s"] == pytest.approx(270 / 4.0)
    assert summary["throughput"]["output_tokens_per_s"] == pytest.approx(19 / 4.0)
    # TTFT of ok requests sorted 0.1 0.2 0.3 0.6: p95 at rank 2.85 -> 0.3 + 0.85 * 0.3 = 0.555 > 0.5.
    assert summary["latency_s"]["ttft"]["p95"] == pytest.approx(0.555)
    # ITL pools 15 gaps (ten 0.05, five 0.1): p95 at rank 13.3 -> 0.1 > 0.05. E2E p95 0.7 <= 2.
    assert summary["latency_s"]["itl"]["count"] == 15
    assert summary["latency_s"]["itl"]["p95"] == pytest.approx(0.1)
    assert summary["goodput"]["slo_p95_met"] == {"ttft_p95_seconds": False, "itl_p95_seconds": False,
                                                 "e2e_p95_seconds": True}
    # TPOT per request with > 1 token: 0.05, 0.1 (request 1: (0.7-0.6)/1), 0.1.
    assert summary["latency_s"]["tpot"]["count"] == 3
    assert summary["latency_s"]["tpot"]["mean"] == pytest.approx((0.05 + 0.1 + 0.1) / 3)
    assert summary["requests"]["outcomes"]["http_error"] == 1
    assert summary["requests"]["outcomes"]["lost_mid_stream"] == 1
    assert summary["requests"]["http_status"] == {"500": 1}
    assert summary["requests"]["accounted"] is True


def test_a_looser_slo_changes_goodput():
    summary = summarize(read_results(HANDMADE), slo={"ttft_p95_seconds": 1.0, "itl_p95_seconds": 0.2})
    assert summary["goodput"]["good_requests"] == 4  # every ok request now passes


def test_unaccounted_requests_are_flagged():
    records = read_results(HANDMADE)
    assert summarize(records, scheduled=7)["requests"]["accounted"] is False
    assert summarize(records + [records[0]], scheduled=7)["requests"]["accounted"] is False  # duplicate index


def test_truncated_last_line_is_skipped_other_bad_lines_are_errors(tmp_path):
    lines = HANDMADE.read_text().splitlines()
    killed = tmp_path / "killed.jsonl"
    killed.write_text("\n".join(lines) + "\n" + lines[0][:40])
    assert len(read_results(killed)) == 6
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0][:40] + "\n" + "\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["summarize", str(broken)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "broken.jsonl:1: not JSON" in result.output


def test_summarize_command_with_deploy(tmp_path):
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["summarize", str(HANDMADE), "--deploy", str(DEPLOY), "--summary-json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["goodput"]["good_requests"] == 2
