"""The canary rollout controller (forge.chaos.rollout): its analysis against Prometheus answers recorded from the
reference stack (fast, no stack), its loop against a real HAProxy, and the bad-canary / good-canary experiments
run by the chaos runner on the real stack (simulators behind HAProxy, Prometheus, the Forge exporter).

The fixtures in tests/fixtures/rollout/ are /api/v1/query answers to `build_queries("s1", "s0", 20)` from a
live stack under 6 requests/s through the gateway: both replicas healthy; s1 with the simulator's slow fault
(factor 10); s1 with error_rate 0.3; s1 at weight 0 (no traffic)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port, running_haproxy
from typer.testing import CliRunner

from forge.chaos import rollout
from forge.chaos.cli import app as chaos_app
from forge.chaos.rollout import (FAIL, INCONCLUSIVE, PASS, ReplicaFigures, RolloutConfig, RolloutController,
                                 Thresholds, analyse_answers, build_queries, figures, judge, parse_steps)
from forge.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures" / "rollout"


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())["answers"]


def verdicts(analysis) -> dict[str, str]:
    return {c.name: c.verdict for c in analysis.checks}


# ------------------------------------------------------------------------------------------ analysis, recorded
def test_recorded_healthy_canary_passes_every_check():
    analysis = analyse_answers(recorded("healthy"), "s1", "s0", Thresholds())
    assert analysis.verdict == PASS, analysis.summary()
    assert verdicts(analysis) == {"error_ratio": PASS, "ttft_p95": PASS, "itl_p95": PASS}
    assert analysis.baseline == "stable now"
    assert analysis.canary.requests >= Thresholds().min_requests and analysis.canary.ttft_p95_seconds < 0.1


def test_recorded_slow_canary_fails_on_latency_relative_to_stable():
    analysis = analyse_answers(recorded("canary-slow"), "s1", "s0", Thresholds())
    assert analysis.verdict == FAIL
    assert verdicts(analysis)["ttft_p95"] == FAIL and verdicts(analysis)["itl_p95"] == FAIL
    assert verdicts(analysis)["error_ratio"] != FAIL and analysis.canary.error_ratio == 0
    # Under the absolute ceilings: it is the comparison with the stable replica that catches it.
    assert analysis.canary.ttft_p95_seconds < Thresholds().max_ttft_p95_seconds
    assert analysis.canary.ttft_p95_seconds > 2 * analysis.stable.ttft_p95_seconds
    # The same canary judged without a baseline (no stable traffic, none seen before): absolute ceilings only.
    alone = judge(analysis.canary, ReplicaFigures(), Thresholds())
    assert alone.baseline == "none" and alone.verdict != FAIL
    assert all(c.verdict == PASS and "no baseline" in c.reason for c in alone.checks if c.name != "error_ratio")


def test_recorded_erroring_canary_fails_on_the_gateway_error_ratio():
    answers = recorded("canary-errors")
    analysis = analyse_answers(answers, "s1", "s0", Thresholds())
    assert analysis.verdict == FAIL and verdicts(analysis)["error_ratio"] == FAIL
    assert analysis.canary.error_ratio > 0.1 and analysis.stable.error_ratio == 0
    # The simulator fails these requests in its HTTP layer, as an API server would: the engine's own counters
    # (the catalog's forge:error_ratio) never see them, HAProxy's 5xx count does.
    engine = rollout.values_by_replica(answers["engine_error_ratio"])
    assert engine["s1"] == 0
    assert rollout.values_by_replica(answers["gateway_5xx"])["s1"] > 0


def test_no_canary_traffic_is_inconclusive_never_a_pass():
    analysis = analyse_answers(recorded("canary-no-traffic"), "s1", "s0", Thresholds())
    assert analysis.canary.requests == 0 and analysis.stable.requests > 50
    assert analysis.verdict == INCONCLUSIVE
    assert set(verdicts(analysis).values()) == {INCONCLUSIVE}


def test_too_few_canary_requests_is_inconclusive():
    healthy = figures(recorded("healthy"), "s1")
    strict = Thresholds(min_requests=int(healthy.requests) + 1, min_token_gaps=int(healthy.itl_count) + 1)
    analysis = analyse_answers(recorded("healthy"), "s1", "s0", strict)
    assert analysis.verdict == INCONCLUSIVE
    assert all("need" in c.reason for c in analysis.checks)


def test_stable_without_traffic_is_replaced_by_the_last_baseline():
    slow = figures(recorded("canary-slow"), "s1")
    baseline = figures(recorded("healthy"), "s0")
    analysis = judge(slow, ReplicaFigures(), Thresholds(), baseline, "stable at 12.0 s")
    assert analysis.baseline == "stable at 12.0 s"
    assert analysis.verdict == FAIL and verdicts(analysis)["ttft_p95"] == FAIL


def test_thresholds_are_configurable_both_ways():
    answers = recorded("canary-slow")
    lenient = Thresholds(max_latency_ratio=100.0, min_requests=15)
    assert analyse_answers(answers, "s1", "s0", lenient).verdict == PASS
    ceiling = Thresholds(max_ttft_p95_seconds=0.1)
    check = next(c for c in analyse_answers(answers, "s1", "s0", ceiling).checks if c.name == "ttft_p95")
    assert check.verdict == FAIL and "ceiling" in check.reason
    errors = recorded("canary-errors")
    assert analyse_answers(errors, "s1", "s0", Thresholds(max_error_ratio=0.5, max_error_ratio_increase=0.5)).verdict == PASS


def test_queries_read_catalog_signals_by_replica_and_the_gateway_by_server():
    queries = build_queries("s1", "s0", 20)
    assert queries == json.loads((FIXTURES / "healthy.json").read_text())["queries"]
    for name, expr in queries.items():
        assert "vllm:" not in expr, name
        assert "[20s]" in expr, name
        if name.startswith("gateway_"):
            assert 'server=~"s1|s0"' in expr and 'proxy="engines"' in expr
        else:
            assert 'replica=~"s1|s0"' in expr and "forge_" in expr
    # The engine-side error ratio is the catalog's own derived expression, with the replica matcher added.
    from forge import catalog

    template = catalog.resolve("error_ratio").expr("20s", "replica")
    assert queries["engine_error_ratio"].replace(',replica=~"s1|s0"', "").replace('{replica=~"s1|s0"}', "") == template
    assert build_queries("s1", "s0", 7.4)["ttft_p95"].count("[7s]") == 1


def test_bad_rollout_settings_are_one_line_input_errors():
    assert parse_steps("10,50,100") == (10, 50, 100)
    for bad in ("50,10", "0,100", "10,abc", "10,150", ""):
        with pytest.raises(InputError) as info:
            parse_steps(bad)
        assert all("\n" not in m and "e.g. 10,50,100" in m for m in info.value.messages), info.value.messages
    with pytest.raises(InputError, match="failure_limit"):
        RolloutConfig(failure_limit=0).check()
    with pytest.raises(InputError, match="both 's1'"):
        RolloutController("http://127.0.0.1:1", "/nonexistent.sock", "s1", "s1")


# ------------------------------------------------------------------------------------------ the loop, real HAProxy
@pytest.fixture
def haproxy(tmp_path):
    """A real HAProxy with backend `engines`: s0 (weight 100) and s1 (weight 0), no checks, nothing behind them."""
    with running_haproxy(tmp_path, {"s0": f"127.0.0.1:{free_port()} weight 100",
                                    "s1": f"127.0.0.1:{free_port()} weight 0"}, timeout_s=10) as sock:
        yield sock


@pytest.mark.stack
def test_no_evidence_rolls_back_after_the_inconclusive_limit_and_reads_weight_0_back(haproxy):
    # Prometheus on a port nobody listens on: every analysis is inconclusive, which must never promote.
    config = RolloutConfig(steps=(10, 100), pause_seconds=0.6, interval_seconds=0.2, inconclusive_limit_seconds=0.6)
    controller = RolloutController(f"http://127.0.0.1:{free_port()}", haproxy, "s1", "s0", config)
    result = controller.run()
    assert result.outcome == "rolled_back" and not result.promoted
    assert [s.percent for s in result.steps] == [10] and result.steps[0].verdict == INCONCLUSIVE
    assert "inconclusive" in result.reason and "prometheus" in result.reason
    assert result.steps[0].canary_weight == 10 and result.steps[0].stable_weight == 90
    assert (result.canary_weight_after, result.stable_weight_after) == (0, 100)
    assert rollout.Weights(haproxy).get("s1") == 0  # read back independently
    assert 1.2 <= result.ended_at - result.started_at < 10


@pytest.mark.stack
def test_ctrl_c_then_stop_rolls_a_running_rollout_back(haproxy):
    config = RolloutConfig(pause_seconds=30, interval_seconds=0.2)
    controller = RolloutController(f"http://127.0.0.1:{free_port()}", haproxy, "s1", "s0", config).start()
    deadline = time.monotonic() + 5
    while rollout.Weights(haproxy).get("s1") != 10:
        assert time.monotonic() < deadline, "the first step never set the canary's weight"
        time.sleep(0.05)
    # Ctrl-C while the experiment waits on the rollout, as `forge chaos run` does; the restore rollback then stops
    # it. (A Thread.join interrupted like this makes the next join return at once on CPython 3.11.)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        controller.wait(10)
    result = controller.stop()
    assert result is not None and result.outcome == "aborted" and not result.promoted
    assert rollout.Weights(haproxy).get("s1") == 0 and rollout.Weights(haproxy).get("s0") == 100


def test_rollout_cli_bad_input_is_one_line_exit_2(tmp_path):
    runner = CliRunner()
    base = ["rollout", "--haproxy-socket", str(tmp_path / "none.sock"), "--canary", "s1", "--stable", "s0"]
    for args, expected in [(["--prometheus", "127.0.0.1:9090"], "--prometheus '127.0.0.1:9090': not an http(s) URL"),
                           (["--prometheus", "http://127.0.0.1:9090"], "no such socket"),
                           ]:
        result = runner.invoke(chaos_app, base + args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output, result.output


@pytest.mark.stack
def test_rollout_cli_rolls_back_without_evidence_and_exits_1(haproxy, tmp_path):
    runner = CliRunner()
    common = ["rollout", "--prometheus", f"http://127.0.0.1:{free_port()}", "--haproxy-socket", str(haproxy)]
    bad = runner.invoke(chaos_app, common + ["--canary", "s9", "--stable", "s0"])
    assert bad.exit_code == 2 and "has no such server" in bad.output, bad.output
    bad = runner.invoke(chaos_app, common + ["--canary", "s1", "--stable", "s0", "--steps", "50,10"])
    assert bad.exit_code == 2 and "increasing percentages" in bad.output, bad.output
    out = tmp_path / "rollout.json"
    result = runner.invoke(chaos_app, common + ["--canary", "s1", "--stable", "s0", "--steps", "25,100",
                                                     "--pause-seconds", "0.4", "--interval-seconds", "0.2",
                                                     "--inconclusive-limit-seconds", "0.4", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "step 25 %: weights s1=25 s0=75" in result.output and "rolled_back" in result.output
    written = json.loads(out.read_text())
    assert written["outcome"] == "rolled_back" and written["canary_weight_after"] == 0
    assert rollout.Weights(haproxy).get("s1") == 0 and rollout.Weights(haproxy).get("s0") == 100


# ------------------------------------------------------------------------------------------ experiments, real stack
def _run(name: str, tmp_path: Path, **overrides):
    from forge.chaos.runner import load_experiment, run_experiment

    path = tmp_path / f"{name}.json"
    journal = run_experiment(load_experiment(name), path, overrides=overrides,
                             log=lambda message: print(time.strftime("%H:%M:%S"), message))
    written = json.loads(path.read_text())
    # Chaos Toolkit's journal keys, and every activity and rollback succeeded.
    assert {"status", "deviated", "steady_states", "run", "rollbacks", "measurements"} <= set(written)
    progress = [(s["percent"], s["verdict"], s["analysis"]) for s in written["measurements"].get("steps", [])]
    assert journal.status == "completed" and not journal.deviated, (journal.notes, written["run"], progress)
    assert all(a["status"] == "succeeded" for a in written["run"] + written["rollbacks"]), written["rollbacks"]
    restored = written["rollbacks"][0]["output"]
    assert restored["weights"] == {"s1": 0, "s0": 100} and sorted(restored["faults_cleared"]) == ["s0", "s1"]
    return written


@pytest.mark.stack
@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode, at_step, failing_check", [("slow", 10, "_p95"), ("error_rate", 50, "error_ratio")])
def test_bad_canary_is_rolled_back_to_weight_0_within_60_s(tmp_path, mode, at_step, failing_check):
    journal = _run("bad-canary", tmp_path, fault_mode=mode, fault_at_step=at_step)
    m = journal["measurements"]
    print(f"\nbad canary ({mode} at {at_step} %): detection {m['detection_seconds']} s, rollback "
          f"{m['rollback_seconds']} s after the fault ({m['rollback_action_seconds']} s after detection); "
          f"whole run {journal['duration']} s")
    assert m["outcome"] == "rolled_back" and m["promoted"] is False
    assert m["canary_weight_after"] == 0 and m["stable_weight_after"] == 100   # read back from HAProxy
    assert 0 < m["detection_seconds"] <= m["rollback_seconds"] < 60
    steps = m["steps"]
    assert [s["percent"] for s in steps] == [p for p in (10, 50, 100) if p <= at_step]
    assert all(s["verdict"] == PASS for s in steps[:-1]) and steps[-1]["verdict"] == FAIL
    failing = [c for c in steps[-1]["failing"][-1]["checks"] if c["verdict"] == FAIL]
    assert failing and all(failing_check in c["name"] for c in failing), failing
    outcomes = m["load"]["outcomes"]
    assert outcomes.get("ok", 0) > 20
    if mode == "error_rate":
        assert outcomes.get("http_error", 0) > 0


@pytest.mark.stack
@pytest.mark.timeout(150)
def test_good_canary_is_promoted_through_every_step(tmp_path):
    journal = _run("good-canary", tmp_path)
    m = journal["measurements"]
    print(f"\ngood canary: promoted in {m['rollout_seconds']} s; canary share per step "
          f"{[s['canary_share'] for s in m['steps']]}; whole run {journal['duration']} s")
    assert m["outcome"] == "promoted" and m["promoted"] is True and m["rollback_seconds"] is None
    assert [(s["percent"], s["verdict"]) for s in m["steps"]] == [(10, PASS), (50, PASS), (100, PASS)]
    assert all(s["analysis"]["canary"]["requests"] >= Thresholds().min_requests for s in m["steps"])
    assert m["canary_weight_after"] == 100 and m["stable_weight_after"] == 0   # read back from HAProxy
    assert m["load"]["outcomes"].get("ok", 0) > 50 and not m["load"]["outcomes"].get("http_error")
