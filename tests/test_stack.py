"""The reference stack for real: two simulator replicas behind HAProxy, Prometheus, Alertmanager, the Forge exporter
and the webhook receiver, as local processes on free loopback ports. One stack per module (about 3 s to start);
the tests run in file order against it and the last one takes it down. Needs haproxy, prometheus and
prometheus-alertmanager (`make stack-deps`, part of `make test`)."""

from __future__ import annotations

import json
import socket
import statistics
import time
import urllib.parse
from pathlib import Path

import pytest
from helpers import LogFollower, need_stack_binaries, wait_for
import yaml
from typer.testing import CliRunner

from forge.reference_stack import stack
from forge.reference_stack.receiver import alert_events
from forge.reference_stack.stack_cli import app as stack_app

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

need_stack_binaries()

TEST_ALERT = "ForgeEngineDownStackTest"
TEST_ALERT_FOR = "5s"
ALERT_DEADLINE_S = 75.0
runner = CliRunner()


def _fast_engine_down_rules(directory: Path) -> Path:
    """The reference stack's own ForgeEngineDown rule (same expression) with a short `for:`, so the test sees
    the whole path — exporter, Prometheus, Alertmanager, receiver — within seconds instead of over a minute."""
    rules = yaml.safe_load(stack.DEFAULT_RULES.read_text())
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ForgeEngineDown")
    fast = dict(rule, alert=TEST_ALERT, **{"for": TEST_ALERT_FOR})
    path = directory / "stack-test-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "forge-stack-test", "rules": [fast]}]}))
    return path


def _get_json(url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    return stack.http_json(url, timeout_s=timeout, body=body)


def _query(running, promql: str) -> list[dict]:
    url = f"{running.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return _get_json(url)["data"]["result"]


def _complete(gateway_url: str) -> dict:
    return _get_json(f"{gateway_url}/v1/completions", {"model": "tiny", "prompt": "hello stack", "max_tokens": 4})


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    plan = stack.StackPlan(state_dir=tmp / "state", engine="sim", replicas=2, ports=stack.Ports.free(2),
                           rule_files=[stack.DEFAULT_RULES, _fast_engine_down_rules(tmp)])
    started = time.monotonic()
    try:
        state = stack.up(plan)
        state.startup_measured_s = time.monotonic() - started
        yield state
    finally:
        stack.down(plan.state_dir)  # always: also after a failed test or a failed start


def test_stack_is_up_and_routes_a_completion(running):
    print(f"\nstack start-up (until HAProxy has every replica UP): {running.startup_measured_s:.2f} s")
    report = stack.status(running.state_dir)
    assert report["healthy"], report
    assert {c["name"] for c in report["components"]} == {
        "engine-s0", "engine-s1", "receiver", "alertmanager", "prometheus", "haproxy", "exporter"}
    assert [s["status"] for s in report["servers"]] == ["UP", "UP"]
    answer = _complete(running.gateway_url)
    assert answer["usage"]["completion_tokens"] == 4
    assert answer["choices"][0]["text"]


def test_gateway_streams_tokens_as_they_come(running):
    """A gateway that buffers SSE turns every stream into one burst at the end: clients then see TTFT equal to the
    whole completion time. Measured with Forge's own load client, through HAProxy and straight at a replica."""
    from forge.load.cli import app as load_app

    records = {}
    for name, url in (("gateway", running.gateway_url), ("direct", running.engines()[0].url)):
        out = running.state_dir / f"stream-{name}.jsonl"
        result = runner.invoke(load_app, ["run", "--target", url, "--rate", "4", "--duration", "2", "--max-requests",
                                          "6", "--output-tokens", "fixed:48", "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        records[name] = [json.loads(line) for line in out.read_text().splitlines()]
    for name, rows in records.items():
        ok = [r for r in rows if r["outcome"] == "ok"]
        assert len(ok) == len(rows) == 6, (name, [r["outcome"] for r in rows])
        # 48 tokens at a few ms each: the first one must arrive well before the last. A buffering gateway delays
        # every stream; a stall of the shared host can delay one request's first token, so the median is graded.
        shares = sorted(r["ttft_s"] / r["e2e_s"] for r in ok)
        assert statistics.median(shares) < 0.5, (name, shares)
        for r in ok:
            assert max(r["itl_s"]) > 0.001, (name, "every gap under 1 ms: the stream arrived in one burst")


def test_up_again_is_a_no_op(running):
    plan = stack.StackPlan(state_dir=running.state_dir, replicas=2,
                           ports=stack.Ports(**running.plan["ports"]))
    plan.rule_files = []  # not part of the identity of a running stack
    again = stack.up(plan)
    assert [c.pid for c in again.components] == [c.pid for c in running.components]


def test_prometheus_scrapes_every_target(running):
    def all_up():
        targets = _get_json(f"{running.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 30, 0.5)
    assert targets, _get_json(f"{running.prometheus_url}/api/v1/targets")
    jobs = sorted(t["labels"]["job"] for t in targets)
    assert jobs == ["alertmanager", "engines", "engines", "forge-exporter", "haproxy", "prometheus",
                    "simulated-gpus", "simulated-gpus"]


def test_prometheus_loaded_forge_rules(running):
    groups = _get_json(f"{running.prometheus_url}/api/v1/rules")["data"]["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    expected = {r["alert"] for g in yaml.safe_load(stack.DEFAULT_RULES.read_text())["groups"]
                for r in g["rules"] if "alert" in r}
    assert expected <= alerts and {"ForgeEngineDown", "ForgeEngineHung", TEST_ALERT} <= alerts
    assert all(r["health"] != "err" for g in groups for r in g["rules"])


def test_prometheus_has_engine_data(running):
    def series(promql):
        return _query(running, promql)

    engine_series = wait_for(lambda: len(series("vllm:num_requests_running")) == 2 and
                              len(series("forge_engine_up")) == 2 and
                              len(series('haproxy_server_status{proxy="engines",state="UP"}==1')) == 2, 30, 0.5)
    assert engine_series, (series("vllm:num_requests_running"), series("forge_engine_up"))
    replicas = {s["metric"]["replica"]: s["value"][1] for s in series("forge_engine_up")}
    assert replicas == {"s0": "1", "s1": "1"}
    assert wait_for(lambda: any(float(s["value"][1]) >= 1 for s in series("vllm:request_success_total")), 20, 0.5)


def test_gateway_runtime_api_drain_and_weight(running):
    gateway = stack.Gateway(running)
    gateway.drain("s0")
    gateway.set_weight("s1", 50)
    states = {s["name"]: s for s in gateway.servers()}
    assert states["s0"]["status"] == "DRAIN" and states["s1"]["weight"] == 50
    result = runner.invoke(stack_app, ["gateway", "set", "s0", "--state", "ready", "--weight", "100",
                                       "--state-dir", str(running.state_dir)])
    assert result.exit_code == 0, result.output
    gateway.set_weight("s1", 100)
    assert [(s["status"], s["weight"]) for s in gateway.servers()] == [("UP", 100), ("UP", 100)]
    with pytest.raises(stack.StackError):
        gateway.drain("s9")


def test_crashed_replica_marked_down_traffic_continues_and_alert_fires(running):
    victim = running.component("engine-s1")
    gateway = stack.Gateway(running)
    crashed_at = time.time()
    t0 = time.monotonic()
    _get_json(f"{victim.url}/_forge/faults", {"mode": "crash"})  # the simulator exits with status 1
    assert wait_for(lambda: not victim.leader_alive(), 5)

    down_after = wait_for(lambda: (time.monotonic() - t0) if {s["name"]: s["status"] for s in gateway.servers()}
                           .get("s1", "").startswith("DOWN") else None, 10, 0.05)
    assert down_after is not None, gateway.servers()
    print(f"\nHAProxy marked s1 DOWN {down_after:.2f} s after the crash (inter 1 s, fall 2)")
    # fall 2 at 1 s intervals: two failed checks, so at most ~2 intervals plus slack.
    assert down_after < 3.5

    for _ in range(6):
        assert _complete(running.gateway_url)["usage"]["completion_tokens"] == 4

    def fired():
        return [e for e in alert_events(running.receiver_file)
                if e["alertname"] == TEST_ALERT and e["status"] == "firing" and e["labels"].get("replica") == "s1"]

    events = wait_for(fired, ALERT_DEADLINE_S, 0.25)
    assert events, f"no {TEST_ALERT} for s1 in {running.receiver_file}: {alert_events(running.receiver_file)}"
    print(f"{TEST_ALERT} (for: {TEST_ALERT_FOR}) reached the receiver "
          f"{events[0]['received_unix'] - crashed_at:.1f} s after the crash")
    assert not [e for e in alert_events(running.receiver_file) if e["labels"].get("replica") == "s0"
                and e["alertname"] == TEST_ALERT]

    up_series = _query(running, 'up{job="engines"}')
    assert {s["metric"]["replica"]: s["value"][1] for s in up_series} == {"s0": "1", "s1": "0"}
    haproxy_view = _query(running, 'haproxy_server_status{proxy="engines",state="UP"}')
    assert {s["metric"]["server"]: s["value"][1] for s in haproxy_view} == {"s0": "1", "s1": "0"}


def test_status_and_logs_commands(running):
    result = runner.invoke(stack_app, ["status", "--format", "json", "--state-dir", str(running.state_dir)])
    assert result.exit_code == 1  # s1 crashed: not healthy
    report = json.loads(result.output)
    rows = {r["name"]: r for r in report["components"]}
    assert not rows["engine-s1"]["alive"] and rows["engine-s0"]["healthy"] and rows["prometheus"]["healthy"]
    logs = runner.invoke(stack_app, ["logs", "haproxy", "--state-dir", str(running.state_dir), "-n", "400"])
    assert logs.exit_code == 0 and "engines/s1 is DOWN" in logs.output
    missing = runner.invoke(stack_app, ["logs", "nope", "--state-dir", str(running.state_dir)])
    assert missing.exit_code == 2
    missing = runner.invoke(stack_app, ["logs", "nope", "--follow", "--state-dir", str(running.state_dir)])
    assert missing.exit_code == 2 and "no such component log" in missing.output


def test_logs_follow_prints_new_lines_survives_a_recreated_log_and_ends_on_ctrl_c(running):
    """engine-s1 crashed above: its log is quiet, so the lines written here are the only new ones."""
    import signal

    log = running.state_dir / "logs" / "engine-s1.log"
    tail = stack.log_tail(log, 3).splitlines()
    follower = LogFollower(running.state_dir, "engine-s1", lines=3)
    try:
        assert follower.saw(tail[-1], 20), follower.lines  # the last lines first (the CLI takes ~2 s to start)
        assert follower.lines[:len(tail)] == tail
        with log.open("a") as f:
            f.write("follow-test: appended 1\nfollow-test: appended 2\n")
        assert follower.saw("follow-test: appended 2", 5), follower.lines
        # A restart that writes a new file under the same name (tail -F's case): the old one moved away.
        log.rename(log.with_suffix(".log.1"))
        time.sleep(0.5)  # a poll or two with no file: the follower must wait for it, not end
        log.write_text("follow-test: new file 1\n")
        assert follower.saw("follow-test: new file 1", 5), follower.lines
        with log.open("a") as f:
            f.write("follow-test: new file 2\n")
        assert follower.saw("follow-test: new file 2", 5), follower.lines
        assert follower.process.poll() is None  # still following: the stack is up
        follower.process.send_signal(signal.SIGINT)  # Ctrl-C
        code, stderr = follower.wait(10)
        assert code == 0 and "Traceback" not in stderr, stderr
        assert [line for line in follower.lines if line.startswith("follow-test")] == [
            "follow-test: appended 1", "follow-test: appended 2", "follow-test: new file 1", "follow-test: new file 2"]
    finally:
        follower.kill()


def test_down_leaves_no_process_behind(running):
    pids = [c.pid for c in running.components]
    ports = running.plan["ports"]
    follower = LogFollower(running.state_dir, "haproxy", lines=1)
    try:
        assert wait_for(lambda: follower.lines, 20), "the follower printed nothing"
        result = runner.invoke(stack_app, ["down", "--state-dir", str(running.state_dir)])
        assert result.exit_code == 0, result.output
        # `logs --follow` stops by itself once the stack is down: exit 0 and a one-line note.
        code, stderr = follower.wait(10)
        assert code == 0 and "brought down" in stderr and len(stderr.strip().splitlines()) == 1, (code, stderr)
    finally:
        follower.kill()
    assert not [pid for pid in pids if stack._group_members(pid)]
    assert all(stack.port_is_free("127.0.0.1", port) for name, port in ports.items() if name != "engine")
    assert not (running.state_dir / "state.json").exists()
    again = runner.invoke(stack_app, ["down", "--state-dir", str(running.state_dir)])
    assert again.exit_code == 0 and "no stack running" in again.output


def _stack_processes(state_dir: Path) -> list[int]:
    """Live processes whose command line names the state dir (every service's does)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state_dir) in text and stack._proc_start_time(int(cmdline.parent.name)) is not None:
            found.append(int(cmdline.parent.name))
    return found


def test_up_failing_halfway_leaves_nothing(tmp_path):
    state_dir = tmp_path / "state"
    # A simulator flag it refuses: the engines exit at once, after the services have started.
    plan = stack.StackPlan(state_dir=state_dir, replicas=1, ports=stack.Ports.free(1),
                           sim_args=["--max-num-seqs", "0"])
    with pytest.raises(stack.StackError, match="engine-s0 exited during start-up"):
        stack.up(plan)
    assert wait_for(lambda: not _stack_processes(state_dir), 5) is not None or not _stack_processes(state_dir)
    assert all(stack.port_is_free("127.0.0.1", port) for port in plan.all_ports().values())
    assert stack.status(state_dir)["components"] == []


def test_port_taken_is_bad_input(tmp_path):
    ports = stack.Ports.free(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.gateway))
        holder.listen()
        result = runner.invoke(stack_app, ["up", "--replicas", "1", "--state-dir", str(tmp_path / "s"),
                                           "--engine-port", str(ports.engine), "--gateway-port", str(ports.gateway),
                                           "--haproxy-stats-port", str(ports.haproxy_stats),
                                           "--exporter-port", str(ports.exporter),
                                           "--prometheus-port", str(ports.prometheus),
                                           "--alertmanager-port", str(ports.alertmanager),
                                           "--receiver-port", str(ports.receiver)])
    assert result.exit_code == 2
    assert f"gateway 127.0.0.1:{ports.gateway}" in result.output and "port already in use" in result.output


def test_bad_options_are_bad_input(tmp_path):
    result = runner.invoke(stack_app, ["up", "--engine", "sim", "--tp", "2", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--tp applies to --engine vllm only" in result.output
    result = runner.invoke(stack_app, ["up", "--replicas", "2", "--weights", "1", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--weights" in result.output
    result = runner.invoke(stack_app, ["up", "--supervise", "--stall-seconds", "0", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--stall-seconds 0: use 1 to 3600" in result.output


def _fake_haproxy_socket(path: Path, answer: str):
    """A one-shot Unix socket that answers any runtime-API command with `answer`, as HAProxy does."""
    import threading

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve():
        connection, _ = server.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(answer.encode())
        server.close()

    threading.Thread(target=serve, daemon=True).start()


def test_show_stat_with_a_failing_check_is_parsed_not_mistaken_for_a_refused_command(tmp_path):
    # A server whose health check got a bad answer has check_desc "Layer7 invalid response" in its row; CI once
    # read that as HAProxy refusing the command. Only a refusal's one-line answer is an error.
    header = "# pxname,svname,scur,status,weight,check_status,check_desc"
    rows = ["engines,s0,4,UP,100,L7OK,Layer7 check passed", "engines,s1,0,UP 1/2,100,L7RSP,Layer7 invalid response",
            "engines,BACKEND,4,UP,200,,"]
    gateway = stack.Gateway.__new__(stack.Gateway)
    gateway.socket_path, gateway.backend = tmp_path / "admin.sock", "engines"
    _fake_haproxy_socket(gateway.socket_path, "\n".join([header, *rows]) + "\n")
    assert gateway.servers() == [{"name": "s0", "status": "UP", "weight": 100, "check": "L7OK"},
                                 {"name": "s1", "status": "UP 1/2", "weight": 100, "check": "L7RSP"}]
    refused = tmp_path / "refused.sock"
    gateway.socket_path = refused
    _fake_haproxy_socket(refused, "No such server.\n")
    with pytest.raises(stack.StackError, match="No such server"):
        gateway.drain("s9")
