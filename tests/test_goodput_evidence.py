"""PERF-014: goodput of a replay against the deployment's own SLO, at the declared traffic and on the way to 3×."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from forge.readiness.assess import assess_file

ROOT = Path(__file__).resolve().parents[1]
DECLARED_P95_RPS = 5.0  # reference-stack/deploy.yaml: traffic.requests_per_second.p95
SLO_TTFT, SLO_ITL = 0.5, 0.05  # its slo.ttft_p95_seconds and slo.itl_p95_seconds


def _replay(path: Path, rate: float, n: int = 100, slow_ttft: int = 0, slow_tokens: int = 0, failed: int = 0):
    """n requests sent at `rate`; the first `slow_ttft` miss the TTFT SLO, the next `slow_tokens` miss it per token,
    the next `failed` fail — every other request is well inside the SLO."""
    lines = []
    for i in range(n):
        ttft, gap, outcome = 0.1, 0.01, "ok"
        if i < slow_ttft:
            ttft = 2 * SLO_TTFT
        elif i < slow_ttft + slow_tokens:
            gap = 2 * SLO_ITL
        elif i < slow_ttft + slow_tokens + failed:
            outcome = "http_error"
        record = {"index": i, "scheduled_s": i / rate, "sent_s": i / rate, "schedule_lag_s": 0.0,
                  "prompt_tokens_target": 64, "output_tokens_target": 32, "outcome": outcome}
        if outcome == "ok":
            record.update(status=200, ttft_s=ttft, itl_s=[gap] * 31, e2e_s=ttft + 31 * gap, tokens_in=64,
                          tokens_out=32)
        else:
            record.update(status=503, error="503 Service Unavailable")
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    return path


def _assess(tmp_path: Path, *results: Path):
    data = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text())
    assert data["traffic"]["requests_per_second"]["p95"] == DECLARED_P95_RPS
    assert (data["slo"]["ttft_p95_seconds"], data["slo"]["itl_p95_seconds"]) == (SLO_TTFT, SLO_ITL)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    a = assess_file(path, None, {"load_results": tuple(results)})
    return {f.check: f for f in a.findings}


def test_percentiles_within_the_slo_but_goodput_short_of_95_percent_fails(tmp_path):
    # 4 % miss TTFT and another 4 % miss the per-token target: each p95 holds, 92 % of requests are good.
    replay = _replay(tmp_path / "results.jsonl", DECLARED_P95_RPS, slow_ttft=4, slow_tokens=4)
    findings = _assess(tmp_path, replay)
    assert findings["PERF-010"].status == "pass", findings["PERF-010"].message
    f = findings["PERF-014"]
    assert (f.status, f.basis) == ("fail", "evidence"), f.message
    assert "goodput 92.0 %" in f.message and "at the declared traffic" in f.message
    assert f.evidence["results.jsonl"]["goodput_fraction"] == 0.92
    assert 0.95 <= f.evidence["results.jsonl"]["multiple_of_p95"] <= 1.05


def test_good_at_1x_and_short_at_3x_warns_and_names_the_3x_replay(tmp_path):
    one = _replay(tmp_path / "one.jsonl", DECLARED_P95_RPS, failed=1)
    three = _replay(tmp_path / "three.jsonl", 3 * DECLARED_P95_RPS, slow_ttft=20)
    f = _assess(tmp_path, one, three)["PERF-014"]
    assert f.status == "warn", f.message
    assert "on the way to 3×" in f.message and "three.jsonl" in f.message and "one.jsonl" not in f.message
    assert f.evidence["one.jsonl"]["goodput_fraction"] == 0.99
    assert f.evidence["three.jsonl"]["goodput_fraction"] == 0.8


def test_good_at_both_passes_and_says_which_multiples_were_measured(tmp_path):
    one = _replay(tmp_path / "one.jsonl", DECLARED_P95_RPS)
    three = _replay(tmp_path / "three.jsonl", 3 * DECLARED_P95_RPS, slow_tokens=3)
    f = _assess(tmp_path, one, three)["PERF-014"]
    assert f.status == "pass", f.message
    assert "3.0×" in f.message and "1.0×" in f.message and "rests on the model" not in f.message


def test_a_replay_below_the_declared_rate_passes_but_says_1x_is_not_measured(tmp_path):
    low = _replay(tmp_path / "low.jsonl", DECLARED_P95_RPS / 4)
    f = _assess(tmp_path, low)["PERF-014"]
    assert f.status == "pass" and "1× itself is not measured" in f.message and "rests on the model" in f.message


def test_goodput_against_unknown_thresholds_is_not_graded(tmp_path):
    # vllm bench serve saves request_goodput but not the --goodput thresholds it was computed with.
    bench = tmp_path / "bench.json"
    shutil.copy(ROOT / "tests" / "fixtures" / "load" / "vllm_bench_serve.json", bench)
    data = json.loads(bench.read_text())
    data["request_goodput"] = 1.0
    bench.write_text(json.dumps(data))
    f = _assess(tmp_path, bench)["PERF-014"]
    assert f.status == "not_applicable" and "bench.json" in f.message


def test_a_poisson_replay_at_the_declared_rate_counts_as_1x_despite_its_sampling_scatter(tmp_path):
    # 88 requests whose schedule reads 4.4 req/s (0.88x of 5): within 2/sqrt(88) = 21 % of the declared rate.
    replay = _replay(tmp_path / "poisson.jsonl", 0.88 * DECLARED_P95_RPS, n=88)
    f = _assess(tmp_path, replay)["PERF-014"]
    assert f.status == "pass" and "0.9×" in f.message and "1× itself is not measured" not in f.message
