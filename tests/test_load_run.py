"""`forge load run` against Forge's engine simulator (a real OpenAI-compatible server on 127.0.0.1, no mocks):
accounting, outcome classification under injected faults, trace replay, loopback enforcement, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from forge.load.cli import app
from forge.load.prompts import LengthDistribution, PromptFactory, calibrate
from forge.load.runner import ResultWriter, RunOptions, is_loopback_url, plan_rate, plan_trace, run_plan
from forge.load.traces import load_trace
from forge.reference_stack.simulator import serve

pytestmark = pytest.mark.timeout(60)
TRACE = Path(__file__).parent.parent / "load" / "traces" / "azure_synthetic.csv"
FIXTURES = Path(__file__).parent / "fixtures" / "load"


def _simulator(**options):
    # Its own process: a simulator thread in the test's process would take the GIL from the client being measured.
    return serve(port=0, in_subprocess=True, **options)


@pytest.fixture(scope="module")
def simulator_url():
    with _simulator() as url:
        yield url


def _run_cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", "--no-progress", *args])
    return result.exit_code, result.output


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(output: str) -> dict:
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


def _fault(url: str, body: dict) -> None:
    httpx.post(f"{url}/_forge/faults", json=body, timeout=5).raise_for_status()


@pytest.mark.parametrize("api,stream", [("completions", True), ("chat", True), ("completions", False)])
def test_every_request_is_recorded_with_exact_prompt_tokens(simulator_url, tmp_path, api, stream):
    out = tmp_path / "results.jsonl"
    code, output = _run_cli(["--target", simulator_url, "--rate", "25", "--duration", "1.2", "--api", api,
                             "--stream" if stream else "--no-stream", "--prompt-tokens", "lognormal:60:200:600",
                             "--output-tokens", "uniform:4:24", "--shared-prefix-tokens", "16", "--out", str(out),
                             "--seed", "5"])
    assert code == 0, output
    summary, records = _summary(output), _records(out)
    assert summary["meta"]["planned"] == summary["requests"]["scheduled"] == len(records) > 10
    assert summary["requests"]["accounted"] and summary["requests"]["outcomes"]["ok"] == len(records)
    assert sorted(r["index"] for r in records) == list(range(len(records)))
    assert summary["meta"]["tokenizer"]["exact"] and summary["meta"]["tokenizer"]["verify_mismatches"] == 0
    for r in records:
        assert r["tokens_in"] == r["prompt_tokens_target"]  # the engine counted what we planned
        assert r["tokens_out"] == r["output_tokens_target"]  # ignore_eos honoured
        assert r["ttft_s"] > 0 and r["e2e_s"] >= r["ttft_s"]
        assert len(r["itl_s"]) == (r["tokens_out"] - 1 if stream else 0)
        assert r["sent_s"] >= r["scheduled_s"] and r["schedule_lag_s"] < 0.1
    assert summary["latency_s"]["itl"]["count"] == sum(len(r["itl_s"]) for r in records)
    # The sending phase's own CPU (what benchmarks/load_gen.py compares): spent, and within the run's wall time.
    assert 0 < summary["meta"]["client_cpu_s"] < summary["duration_s"] + 1.0


def test_error_rate_fault_gives_http_error_500_and_nothing_is_lost(tmp_path):
    with _simulator() as url:
        _fault(url, {"mode": "error_rate", "rate": 0.5})
        out = tmp_path / "results.jsonl"
        code, output = _run_cli(["--target", url, "--rate", "40", "--duration", "1", "--out", str(out),
                                 "--output-tokens", "fixed:4", "--prompt-tokens", "fixed:32"])
    assert code == 0, output
    summary, records = _summary(output), _records(out)
    outcomes = summary["requests"]["outcomes"]
    assert len(records) == summary["requests"]["scheduled"] and summary["requests"]["accounted"]
    assert outcomes["ok"] + outcomes["http_error"] == len(records)
    assert outcomes["http_error"] > 0 and outcomes["ok"] > 0
    assert {r["status"] for r in records if r["outcome"] == "http_error"} == {500}
    assert summary["requests"]["http_status"] == {"500": outcomes["http_error"]}


async def _run_with_fault(url: str, out: Path, fault: dict, fault_after_s: float, *, timeout_s: float,
                          rate: float = 8.0, duration_s: float = 0.6, output_tokens: int = 400) -> tuple[list, int]:
    plan = plan_rate(arrival="constant", rate=rate, burstiness=1.0, duration_s=duration_s, max_requests=None,
                     prompt_lengths=LengthDistribution.parse("fixed:32", "p"),
                     output_lengths=LengthDistribution.parse(f"fixed:{output_tokens}", "o"), seed=0)
    async with httpx.AsyncClient() as client:
        model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        prompts = PromptFactory(await calibrate(client, url, model, "completions"))

    async def inject() -> None:
        await asyncio.sleep(fault_after_s)
        async with httpx.AsyncClient() as client:
            try:
                await client.post(f"{url}/_forge/faults", json=fault, timeout=2)
            except httpx.HTTPError:
                pass  # a crash may take the answer down with it

    with out.open("w") as handle:
        writer = ResultWriter(handle)
        injector = asyncio.create_task(inject())
        dispatched = await run_plan(plan, prompts, RunOptions(url, model, request_timeout_s=timeout_s), writer)
        await injector
    return writer.records, dispatched


def test_hang_mid_stream_is_a_timeout_with_the_tokens_so_far(tmp_path):
    with _simulator() as url:
        records, dispatched = asyncio.run(_run_with_fault(
            url, tmp_path / "r.jsonl", {"mode": "hang", "duration_seconds": 5}, 0.4, timeout_s=1.5))
    assert len(records) == dispatched == len(_records(tmp_path / "r.jsonl")) > 0
    outcomes = {r["outcome"] for r in records}
    assert outcomes <= {"timeout", "ok"} and "timeout" in outcomes
    hung = [r for r in records if r["outcome"] == "timeout"]
    assert any(r["tokens_out"] > 0 for r in hung)  # hung after streaming had started
    assert all(1.4 < r["e2e_s"] < 2.5 for r in hung)


def test_crash_mid_stream_is_lost_mid_stream_then_connect_error(tmp_path):
    with _simulator() as url:
        records, dispatched = asyncio.run(_run_with_fault(
            url, tmp_path / "r.jsonl", {"mode": "crash"}, 0.3, timeout_s=5, rate=10, duration_s=1.5))
    assert len(records) == dispatched > 0
    by_outcome = {}
    for r in records:
        by_outcome.setdefault(r["outcome"], []).append(r)
    assert set(by_outcome) <= {"ok", "lost_mid_stream", "connect_error"}
    assert any(r["tokens_out"] > 0 for r in by_outcome.get("lost_mid_stream", []))
    assert by_outcome.get("connect_error"), "requests sent after the crash find nothing listening"
    crashed_at = min(r["sent_s"] for r in by_outcome["connect_error"])
    assert all(r["sent_s"] < crashed_at + 0.01 for r in by_outcome["lost_mid_stream"])


def test_nothing_listening_is_connect_error(tmp_path):
    out = tmp_path / "r.jsonl"
    code, output = _run_cli(["--target", "http://127.0.0.1:9", "--model", "tiny", "--rate", "20", "--duration", "0.3",
                             "--out", str(out), "--request-timeout", "2"])
    assert code == 0, output
    records = _records(out)
    assert records and {r["outcome"] for r in records} == {"connect_error"}
    assert _summary(output)["meta"]["tokenizer"]["exact"] is False  # no /tokenize to calibrate against


def test_trace_replay_with_speedup_and_window(simulator_url, tmp_path):
    entries = load_trace(TRACE, speedup=10, window=(5.0, 25.0))
    full = load_trace(TRACE)
    expected = [e for e in full if 5.0 <= e.offset_s < 25.0]
    assert len(entries) == len(expected) > 20
    assert [e.offset_s for e in entries] == pytest.approx([(e.offset_s - 5.0) / 10 for e in expected])
    assert [e.prompt_tokens for e in entries] == [e.prompt_tokens for e in expected]
    out = tmp_path / "results.jsonl"
    code, output = _run_cli(["--target", simulator_url, "--trace", str(TRACE), "--speedup", "10",
                             "--trace-window", "5:25", "--duration", "5", "--out", str(out)])
    assert code == 0, output
    records = sorted(_records(out), key=lambda r: r["index"])
    assert len(records) == len(entries)
    assert [r["scheduled_s"] for r in records] == pytest.approx([e.offset_s for e in entries])
    assert [r["prompt_tokens_target"] for r in records] == [e.prompt_tokens for e in entries]
    assert [r["tokens_in"] for r in records] == [e.prompt_tokens for e in entries]
    assert [r["tokens_out"] for r in records] == [e.output_tokens for e in entries]
    # Sent on the replayed clock: 20 trace seconds at 10x take 2 s. (Lag under the trace's bursts is a benchmark
    # figure, benchmarks/load_gen.py; here only that replay keeps time.)
    assert sorted(r["schedule_lag_s"] for r in records)[len(records) // 2] < 0.05
    assert 1.8 < max(r["sent_s"] for r in records) < 2.3


def test_trace_formats_and_errors(tmp_path):
    head = TRACE.read_text().splitlines()[:3]
    assert "SYNTHETIC" in head[0] and head[2] == "TIMESTAMP,ContextTokens,GeneratedTokens"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"timestamp_s": 10.5, "prompt_tokens": 12, "output_tokens": 3}\n'
                     '{"timestamp_s": 10.0, "prompt_tokens": 40, "output_tokens": 5}\n')
    entries = load_trace(jsonl, speedup=2)
    assert [(e.offset_s, e.prompt_tokens) for e in entries] == [(0.0, 40), (0.25, 12)]
    assert plan_trace(entries, duration_s=0.1, max_requests=None)[-1].index == 0  # duration bounds the replay
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,Context\n1,2\n")
    code, output = _run_cli(["--target", "http://127.0.0.1:9", "--trace", str(bad), "--duration", "1",
                             "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and output.count("\n") == 1 and "lacks column(s) ContextTokens, GeneratedTokens" in output
    code, output = _run_cli(["--target", "http://127.0.0.1:9", "--trace", str(TRACE), "--trace-window", "100:200",
                             "--duration", "1", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "no requests" in output


@pytest.mark.parametrize("url,loopback", [("http://127.0.0.1:8000", True), ("http://127.9.8.7:1", True),
                                          ("http://localhost:8000/v1", True), ("http://[::1]:8000", True),
                                          ("http://10.0.0.1:8000", False), ("https://api.example.com", False),
                                          ("http://localhost.example.com", False), ("http://[::2]:80", False)])
def test_loopback_detection(url, loopback):
    assert is_loopback_url(url) is loopback


def test_remote_target_is_refused_without_allow_remote(tmp_path):
    out = tmp_path / "r.jsonl"
    code, output = _run_cli(["--target", "http://192.0.2.10:8000", "--rate", "1", "--duration", "1", "--out", str(out)])
    assert code == 2 and output.count("\n") == 1
    assert "not a loopback address" in output and "--allow-remote" in output
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--rate", "1", "--trace", str(TRACE)], "exactly one of --rate R or --trace FILE"),
    (["--rate", "0"], "--rate 0: must be > 0"),
    (["--rate", "1", "--burstiness", "2"], "applies to --arrival gamma only"),
    (["--rate", "1", "--prompt-tokens", "zipf:3"], "unknown distribution"),
    (["--rate", "1", "--speedup", "3"], "apply to --trace only"),
    (["--rate", "1", "--concurrency-limit", "0"], "--concurrency-limit"),
    (["--rate", "1", "--arrival", "weibull"], "--arrival"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, message):
    code, output = _run_cli(["--target", "http://127.0.0.1:9", "--duration", "1", "--out", str(tmp_path / "o"), *args])
    assert code == 2 and output.count("\n") == 1 and message in output and "Traceback" not in output


def test_concurrency_limit_holds_requests_and_shows_in_schedule_lag(simulator_url, tmp_path):
    out = tmp_path / "r.jsonl"
    code, output = _run_cli(["--target", simulator_url, "--rate", "50", "--arrival", "constant", "--duration", "0.4",
                             "--concurrency-limit", "1", "--output-tokens", "fixed:30", "--prompt-tokens", "fixed:16",
                             "--out", str(out)])
    assert code == 0, output
    records = sorted(_records(out), key=lambda r: r["sent_s"])
    assert len(records) == 20
    # One at a time: each request is sent only after the previous one ended.
    for before, after in zip(records, records[1:]):
        assert after["sent_s"] >= before["sent_s"] + before["e2e_s"] - 0.002
    assert _summary(output)["schedule_lag_s"]["max"] > 0.2


def test_ctrl_c_writes_what_it_has(tmp_path):
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    with _simulator() as url:
        proc = subprocess.Popen([sys.executable, "-m", "forge.load", "run", "--target", url, "--rate", "20",
                                 "--duration", "30", "--output-tokens", "fixed:300", "--out", str(out),
                                 "--summary-json", str(summary), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    data = json.loads(summary.read_text())
    records = _records(out)
    assert data["meta"]["interrupted"] and data["requests"]["accounted"]
    assert len(records) == data["requests"]["scheduled"] < data["meta"]["planned"]
    assert data["requests"]["outcomes"]["cancelled"] >= 1  # in flight at Ctrl-C
    assert all(r["outcome"] in ("ok", "cancelled") for r in records)
