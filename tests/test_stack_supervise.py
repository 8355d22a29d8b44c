"""`forge stack up --supervise`: the replica supervisor (forge.chaos.supervisor, the same implementation the chaos
game days run in-process) as a component of the simulator stack. One stack for the module, started through the
CLI; the tests run in file order: a crashed replica is restarted, a hung one (the progress watchdog's verdict) is
drained and restarted, and `down` leaves nothing running — the supervisor and the engines it started included.
Needs haproxy, prometheus and prometheus-alertmanager (`make stack-deps`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from helpers import LogFollower, need_stack_binaries, stream_long_completion, wait_for
from typer.testing import CliRunner

from forge.reference_stack import stack
from forge.reference_stack.stack_cli import app as stack_app

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

need_stack_binaries()

STALL_SECONDS = 3
# Crash: the supervisor polls every 0.5 s, the simulator starts in ~1-3 s on 2 busy cores, HAProxy needs rise 2 x
# 1 s checks. Hang: stall + 2 watchdog polls (1 s) to detect, then the same restart. Generous for loaded CI.
RECOVERY_BOUND_S = 30.0
runner = CliRunner()


def _supervisor_log(state: stack.StackState) -> str:
    return (state.state_dir / "logs" / "supervisor.log").read_text()


def _engine_pid(state_dir: Path, name: str) -> int:
    return stack.StackState.load(state_dir).component(name).pid


def _server_status(state: stack.StackState, server: str) -> str:
    return next(s["status"] for s in stack.Gateway(state).servers() if s["name"] == server)


def _wait_restarted(state: stack.StackState, name: str, old_pid: int, since: float) -> float | None:
    """Seconds from `since` until the state file names a new, live engine `name` and HAProxy has it UP."""
    server = name.removeprefix("engine-")

    def restarted():
        component = stack.StackState.load(state.state_dir).component(name)
        if component.pid != old_pid and component.leader_alive() and _server_status(state, server) == "UP":
            return time.monotonic() - since
        return None

    return wait_for(restarted, RECOVERY_BOUND_S, 0.1)


def _complete(gateway_url: str) -> dict:
    return stack.http_json(f"{gateway_url}/v1/completions", timeout_s=10,
                           body={"model": "tiny", "prompt": "supervised", "max_tokens": 4})


@pytest.fixture(scope="module")
def supervised(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("supervised") / "state"
    ports = stack.Ports.free(2)
    args = ["up", "--engine", "sim", "--replicas", "2", "--supervise", "--stall-seconds", str(STALL_SECONDS),
            "--no-exporter", "--state-dir", str(state_dir), "--engine-port", str(ports.engine),
            "--gateway-port", str(ports.gateway), "--haproxy-stats-port", str(ports.haproxy_stats),
            "--exporter-port", str(ports.exporter), "--prometheus-port", str(ports.prometheus),
            "--alertmanager-port", str(ports.alertmanager), "--receiver-port", str(ports.receiver)]
    try:
        result = runner.invoke(stack_app, args)
        assert result.exit_code == 0, result.output
        yield stack.StackState.load(state_dir)
    finally:
        stack.down(state_dir)


def test_status_lists_the_supervisor_watching_every_engine(supervised):
    result = runner.invoke(stack_app, ["status", "--format", "json", "--state-dir", str(supervised.state_dir)])
    assert result.exit_code == 0, result.output  # every component healthy, the supervisor included
    rows = {r["name"]: r for r in json.loads(result.output)["components"]}
    assert rows["supervisor"]["alive"] and rows["supervisor"]["healthy"] and rows["supervisor"]["kind"] == "supervisor"
    assert rows["supervisor"]["log"].endswith("logs/supervisor.log")
    table = runner.invoke(stack_app, ["status", "--state-dir", str(supervised.state_dir)])
    assert table.exit_code == 0 and "supervisor" in table.output
    log = _supervisor_log(supervised)
    engines = supervised.engines()
    assert f"watching engine-s0 (pid {engines[0].pid}), engine-s1 (pid {engines[1].pid})" in log
    assert f"no token for {STALL_SECONDS} s" in log
    # Started once every replica was UP, so nothing was restarted on the way up.
    assert "failed:" not in log


def test_up_again_with_the_same_settings_is_a_no_op(supervised):
    plan = stack.StackPlan(state_dir=supervised.state_dir, replicas=2, ports=stack.Ports(**supervised.plan["ports"]),
                           exporter=False, supervise=True, stall_seconds=STALL_SECONDS)
    again = stack.up(plan)
    assert [c.pid for c in again.components] == [c.pid for c in supervised.components]


def test_crashed_replica_is_drained_restarted_and_up_again(supervised):
    victim = supervised.component("engine-s1")
    follower = LogFollower(supervised.state_dir, "engine-s1", lines=1)  # its log, across the restart
    try:
        assert wait_for(lambda: follower.lines, 20), "the follower printed nothing"
        started = time.monotonic()
        stack.http_json(f"{victim.url}/_forge/faults", body={"mode": "crash"})  # the simulator exits with status 1
        recovered = _wait_restarted(supervised, "engine-s1", victim.pid, started)
        log = _supervisor_log(supervised)
        assert recovered is not None, log
        print(f"\ncrashed replica restarted and UP at HAProxy {recovered:.1f} s after the crash")
        new_pid = _engine_pid(supervised.state_dir, "engine-s1")
        # The event, in order, in the supervisor's log: failed (exited) -> drained -> killed -> up.
        steps = [log.find(f"engine-s1: {step}") for step in (f"failed: engine process {victim.pid} exited",
                                                                "drained: ", "killed: ", f"up: restarted (pid {new_pid})")]
        assert -1 not in steps and steps == sorted(steps), log
        # The restarted engine serves: traffic through the gateway reaches both replicas again.
        for _ in range(4):
            assert _complete(supervised.gateway_url)["usage"]["completion_tokens"] == 4
        # `logs --follow` kept following the replica's log through the restart: it shows the crash and the new
        # process starting (the simulator's "listening" line, after the crash line).
        assert follower.saw("crash fault", 5), follower.lines
        crash = next(i for i, line in enumerate(follower.lines) if "crash fault" in line)
        assert wait_for(lambda: any("forge simulator listening on" in line for line in follower.lines[crash:]), 5), \
            follower.lines
    finally:
        follower.kill()


def test_hung_replica_is_detected_by_the_watchdog_drained_and_restarted(supervised):
    victim = stack.StackState.load(supervised.state_dir).component("engine-s0")
    # Streams held open on s0 directly: a hang only shows while requests run (tokens frozen, /health still 200).
    streams = [threading.Thread(target=stream_long_completion, args=(victim.url, f"hold {i}"), daemon=True)
               for i in range(2)]
    for t in streams:
        t.start()
    assert wait_for(lambda: _running_requests(victim.url) >= 1, 10, 0.1), "no request running on s0"
    started = time.monotonic()
    stack.http_json(f"{victim.url}/_forge/faults", body={"mode": "hang"})
    assert stack.http_status(f"{victim.url}/health") == 200  # the liveness probe does not see it
    recovered = _wait_restarted(supervised, "engine-s0", victim.pid, started)
    log = _supervisor_log(supervised)
    assert recovered is not None, log
    print(f"\nhung replica (stall {STALL_SECONDS} s) restarted and UP at HAProxy {recovered:.1f} s after the hang")
    assert recovered > STALL_SECONDS  # it waited for the stall, it did not act on something else
    assert "watchdog: engine-s0 healthy -> hung" in log, log
    hung = log.index("engine-s0: failed: ")
    assert "frozen" in log[hung:log.index("\n", hung)], log  # failed as hung: the watchdog's reason
    assert log.index("engine-s0: drained", hung) < log.index("engine-s0: up: restarted", hung)
    for t in streams:
        t.join(timeout=10)
    assert _complete(supervised.gateway_url)["usage"]["completion_tokens"] == 4


def _metrics(url: str) -> str:
    import urllib.request

    with stack.LOOPBACK.open(urllib.request.Request(f"{url}/metrics"), timeout=5) as resp:
        return resp.read().decode()


def _running_requests(url: str) -> float:
    lines = [line for line in _metrics(url).splitlines() if line.startswith("vllm:num_requests_running")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_down_stops_the_supervisor_and_every_engine_it_started(supervised):
    current = stack.StackState.load(supervised.state_dir)
    pids = [c.pid for c in current.components]
    restarted = {c.name: c.pid for c in current.engines()}
    assert restarted["engine-s0"] != supervised.component("engine-s0").pid  # both engines are the supervisor's now
    assert restarted["engine-s1"] != supervised.component("engine-s1").pid
    result = runner.invoke(stack_app, ["down", "--state-dir", str(supervised.state_dir)])
    assert result.exit_code == 0, result.output
    assert "supervisor" in result.output and "engine-s0" in result.output and "engine-s1" in result.output
    assert not [pid for pid in pids if stack._group_members(pid)]
    assert not (supervised.state_dir / "state.json").exists()
    assert _supervisor_log(supervised).rstrip().splitlines()[-1].split("supervisor: ", 1)[1].startswith("stopped")
