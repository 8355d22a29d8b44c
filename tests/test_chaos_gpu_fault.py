"""Game day "GPU fault" (issue #9, experiment 1) on the real reference stack: `forge chaos run gpu-fault` with
simulator replicas behind HAProxy, Prometheus, Alertmanager, the Forge exporter and the Forge replica supervisor.
Phase A: XID 79 + uncorrectable ECC on replica 1's DCGM metrics -> the real GPU alerts reach the receiver and the
supervisor replaces the replica. Phase B: its engine is SIGKILLed under load -> HAProxy DOWN within its check
budget, ForgeEngineDown at the receiver, in-flight requests counted, new ones served, restarted, UP again.
The vllm-marked test runs phase B on real vLLM, killing only the EngineCore child."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest
from helpers import need_stack_binaries
import yaml
from typer.testing import CliRunner

from forge.chaos.cli import app
from forge.chaos.runner import load_experiment, run_experiment, short_rule_copy
from forge.chaos.supervisor import Supervisor
from forge.errors import InputError
from forge.reference_stack import stack

# HAProxy in the lab: DOWN after fall (2) failed checks at 200 ms; the slack covers a loaded 2-core machine.
CHECK_BUDGET_S = 2 * 0.2 + 1.5


@pytest.fixture(scope="module")
def gameday(tmp_path_factory):
    """One run of the bundled experiment through the CLI (about 45 s); the tests read its journal."""
    need_stack_binaries()
    journal_path = tmp_path_factory.mktemp("gpu-fault") / "journal.json"
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", "gpu-fault", "--journal", str(journal_path)])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    journal = json.loads(journal_path.read_text())
    m = journal["measurements"]
    print(f"\ngpu-fault game day in {elapsed:.0f} s (stack start {m['stack_start_seconds']} s)\n"
          f"  XID 79 + ECC: ForgeGPUXidCritical at receiver {m['xid_alert_seconds']} s, ForgeGPUEccUncorrectable "
          f"{m['xid_ecc_alert_seconds']} s, drained {m['xid_detection_seconds']} s, UP again "
          f"{m['xid_recovery_seconds']} s after the fault; lost {m['xid_lost_requests']} of "
          f"{m['xid_in_flight_at_fault']} in flight\n"
          f"  engine killed: HAProxy DOWN {m['detection_seconds']} s, ForgeEngineDown at receiver "
          f"{m['alert_seconds']} s, "
          f"UP again {m['recovery_seconds']} s; lost {m['lost_requests']} of {m['in_flight_at_fault']} in flight, "
          f"{m['new_requests_lost']} of {m['new_requests']} later requests")
    return journal, result.output, elapsed


@pytest.mark.stack
@pytest.mark.timeout(240)
def test_gpu_fault_journal_completes_within_budget(gameday):
    journal, output, elapsed = gameday
    assert elapsed < 120, f"the run took {elapsed:.0f} s"
    assert "gpu-fault" in journal["experiment"]["tags"]
    assert journal["status"] == "completed" and journal["deviated"] is False, journal["notes"]
    for phase in ("before", "after"):
        assert all(p["tolerance_met"] for p in journal["steady_states"][phase]["probes"])
    for activity in journal["run"] + journal["rollbacks"]:
        assert activity["status"] == "succeeded", activity
        assert "skipped" not in (activity["output"] or {}), activity  # both phases ran on the simulator
    assert journal["rollbacks"][0]["activity"]["name"] == "stop-supervisor-and-journal-its-events"


@pytest.mark.stack
@pytest.mark.timeout(240)
def test_gpu_xid_and_ecc_alerts_arrive_and_the_supervisor_replaces_the_replica(gameday):
    journal, _, _ = gameday
    m = journal["measurements"]
    runs = {a["activity"]["name"]: a["output"] for a in journal["run"]}
    assert runs["xid-alert-reaches-receiver"]["severity"] == "page"
    # The real rules (no `for`): scrape 1 s + evaluation 1 s + group_wait 1 s, with slack for a loaded machine.
    assert 0 < m["xid_alert_seconds"] < 15 and 0 < m["xid_ecc_alert_seconds"] < 15
    # The supervisor acted on the alert (not on a dead process): drained after the alert, UP again after.
    assert m["xid_failure_seen_as"] == "alert"
    assert m["xid_alert_seconds"] <= m["xid_detection_seconds"] < m["xid_recovery_seconds"] < 60
    events = [e for e in m["supervisor"]["events"] if e["replica"] == "replica-1"]
    assert [e["event"] for e in events][:4] == ["failed", "drained", "killed", "up"]
    # Drained, then killed only after restart_delay_seconds: the streams it held finished meanwhile.
    assert m["xid_lost_requests"] <= m["xid_in_flight_at_fault"] and m["xid_new_requests_lost"] == 0


@pytest.mark.stack
@pytest.mark.timeout(240)
def test_killed_engine_is_down_at_haproxy_alerted_counted_and_rejoins(gameday):
    journal, _, _ = gameday
    m = journal["measurements"]
    assert m["in_flight_at_fault"] >= 1
    assert 0 < m["detection_seconds"] <= CHECK_BUDGET_S, m["detection_seconds"]
    runs = {a["activity"]["name"]: a["output"] for a in journal["run"]}
    assert runs["haproxy-marks-killed-replica-down"]["haproxy_status"].startswith("DOWN")
    # ForgeEngineDown with `for: 1s`: exporter + Prometheus scrapes, two evaluations, group_wait.
    assert m["detection_seconds"] < m["alert_seconds"] < 30
    assert m["failure_seen_as"] == "exited"
    assert m["alert_seconds"] < m["recovery_seconds"] < 60
    # Requests in flight on the dead replica are lost (and counted), no more; later ones all served by replica 0.
    assert 1 <= m["lost_requests"] <= m["in_flight_at_fault"]
    assert m["new_requests"] >= 3 and m["new_requests_lost"] == 0
    assert m["supervisor"]["replicas"]["replica-1"] == {"state": "up", "failures": 2, "restarts": 2}
    assert m["supervisor"]["replicas"]["replica-0"]["failures"] == 0
    # Nothing left behind.
    for replica in m["replicas"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(replica["url"] + "/health", timeout=2, trust_env=False)


def test_short_rule_copy_keeps_the_committed_rule_and_shortens_it(tmp_path):
    out = short_rule_copy(stack.DEFAULT_RULES, {"ForgeEngineDown": {"for": "1s"},
                                                "ForgeEngineHung": {"for": "1s", "window": "6s"}},
                          tmp_path / "rules.yaml")
    committed = {r["alert"]: r for g in yaml.safe_load(stack.DEFAULT_RULES.read_text())["groups"]
                 for r in g["rules"] if "alert" in r}
    copied = {r["alert"]: r for g in yaml.safe_load(out.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert set(copied) == set(committed)
    assert copied["ForgeEngineDown"]["for"] == "1s" and committed["ForgeEngineDown"]["for"] != "1s"
    assert copied["ForgeEngineDown"]["expr"] == committed["ForgeEngineDown"]["expr"]
    assert "[6s]" in copied["ForgeEngineHung"]["expr"] and "[2m]" not in copied["ForgeEngineHung"]["expr"]
    assert copied["ForgeEngineHung"]["expr"] == committed["ForgeEngineHung"]["expr"].replace("[2m]", "[6s]")
    assert copied["ForgeGPUXidCritical"] == committed["ForgeGPUXidCritical"]
    with pytest.raises(InputError, match="no alert ForgeNoSuchAlert"):
        short_rule_copy(stack.DEFAULT_RULES, {"ForgeNoSuchAlert": {"for": "1s"}}, tmp_path / "x.yaml")
    with pytest.raises(InputError, match="unknown key"):
        short_rule_copy(stack.DEFAULT_RULES, {"ForgeEngineDown": {"fr": "1s"}}, tmp_path / "x.yaml")


def test_bad_supervisor_settings_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"max_restarts 0: use 1-10"):
        Supervisor([], gateway=None, max_restarts=0)
    experiment = load_experiment("gpu-fault")
    # Checked before anything starts (no stack comes up for a typo).
    with pytest.raises(InputError, match="unknown option.*restarts.*valid: poll_interval_seconds"):
        run_experiment(experiment, overrides={"supervisor": {"restarts": 2}})
    with pytest.raises(InputError, match="needs the gateway"):
        run_experiment(experiment, overrides={"lab": "replicas"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**experiment, "configuration": {**experiment["configuration"],
                                                                   "supervisor": {"restarts": 2}}}))
    result = CliRunner().invoke(app, ["run", str(bad), "--journal", str(tmp_path / "j.json")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "configuration.supervisor: unknown option(s) restarts" in result.output


def test_simulator_gpu_fault_shows_xid_and_uncorrectable_ecc_as_dcgm_metrics():
    from forge.reference_stack.simulator import serve

    def gauge(page: str, name: str) -> float:
        return next(float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(name + "{"))

    with serve() as url, httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        page = client.get("/gpu-metrics").text
        assert gauge(page, "DCGM_FI_DEV_XID_ERRORS") == 0 and gauge(page, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 0
        assert client.post("/_forge/faults", json={"mode": "xid", "xid": 79, "ecc_dbe": 2}).status_code == 200
        page = client.get("/gpu-metrics").text
        assert gauge(page, "DCGM_FI_DEV_XID_ERRORS") == 79 and gauge(page, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 2
        bad = client.post("/_forge/faults", json={"mode": "xid", "xid": 79, "ecc_dbe": -1})
        assert bad.status_code >= 400 and "ecc_dbe" in bad.text
        client.post("/_forge/faults", json={"mode": "none"})
        page = client.get("/gpu-metrics").text
        assert gauge(page, "DCGM_FI_DEV_XID_ERRORS") == 0 and gauge(page, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 0


@pytest.mark.vllm
@pytest.mark.stack
@pytest.mark.timeout(900)
def test_real_vllm_engine_core_killed_replica_removed_alerted_restarted(tmp_path):
    """Phase B on real vLLM, two replicas (each bound to its own core by the stack): only the EngineCore child of
    replica 1 is SIGKILLed under load. vLLM's API server answers 503 and exits seconds later: HAProxy marks it DOWN,
    ForgeEngineDown arrives, the requests it held are counted as lost, new requests succeed on replica 0, and the
    supervisor restarts replica 1 (on the same core) until it is UP again."""
    from forge.reference_stack import model_build
    from forge.reference_stack.vllm_engine import REPO_ROOT, vllm_python

    need_stack_binaries()
    if not vllm_python().exists():
        pytest.fail(f"{vllm_python()} missing — run `make vllm` first", pytrace=False)
    model_dir = model_build.ensure_built(vllm_python(), REPO_ROOT / model_build.DEFAULT_MODEL_DIR)
    experiment = load_experiment("gpu-fault")
    overrides = {"engine": "vllm", "model_dir": str(model_dir), "replicas": 2, "target_replica": 1,
                 "phases": ["engine"], "kill_process": "engine-core", "vllm_args": ["--enforce-eager"],
                 "simulator_options": {}, "load_rate": 2, "load_output_tokens": 256, "load_max_seconds": 600,
                 "request_timeout_seconds": 60, "steady_window_seconds": 20,  # 256-token streams take seconds
                 # vLLM's /metrics goes away ~3 s after the kill: the alert needs longer than with the simulator.
                 "supervisor": {**experiment["configuration"]["supervisor"], "restart_delay_seconds": 15}}
    lines: list[str] = []
    started = time.monotonic()
    journal = run_experiment(experiment, tmp_path / "journal.json", overrides=overrides,
                             log=lambda line: lines.append(f"{time.monotonic() - started:7.1f} {line}"))
    print("\n" + "\n".join(lines))
    m = journal.measurements
    print(f"real vLLM EngineCore killed: {m.get('in_flight_at_fault')} in flight; HAProxy DOWN "
          f"{m.get('detection_seconds')} s, ForgeEngineDown {m.get('alert_seconds')} s, UP again "
          f"{m.get('recovery_seconds')} s (restart {m.get('restart_seconds')} s, seen as {m.get('failure_seen_as')}); "
          f"lost {m.get('lost_requests')}; stack start {m.get('stack_start_seconds')} s")
    assert journal.status == "completed" and journal.deviated is False, journal.notes
    assert "xid_alert_seconds" not in m  # phase A skipped on vLLM: no GPU metrics without a GPU
    assert 0 < m["detection_seconds"] <= CHECK_BUDGET_S  # vLLM's /health answers 503 at once
    assert m["failure_seen_as"] in ("unhealthy", "exited")
    assert m["detection_seconds"] < m["alert_seconds"] < m["recovery_seconds"]
    # The streams on the killed replica are counted from the client's records (sent before the kill, failed after
    # it). HAProxy's scur read just before the kill can miss them (seen once in CI: 0 in flight, 2 lost), so the
    # client's count is the one asserted.
    assert 1 <= m["lost_requests"]
    # Traffic went on through replica 0. vLLM's API server outlives its EngineCore by seconds, answering errors, so
    # only requests the balancer sent it before HAProxy marked it DOWN can fail: at most the load rate x detection.
    assert m["new_requests"] >= 10
    assert m["new_requests_lost"] <= math.ceil(overrides["load_rate"] * m["detection_seconds"]) + 1
    assert m["supervisor"]["replicas"]["replica-1"] == {"state": "up", "failures": 1, "restarts": 1}
    assert m["supervisor"]["replicas"]["replica-0"] == {"state": "up", "failures": 0, "restarts": 0}


def _supervised_stack_experiment(method: list[dict], supervisor: dict) -> dict:
    """A small stack-lab experiment (two simulator replicas, the supervisor, light load) around `method`."""
    return {"title": "supervisor drill", "method": method,
            "rollbacks": [{"type": "action", "name": "stop-supervisor",
                           "provider": {"type": "python", "module": "forge.chaos.supervisor",
                                        "func": "stop_supervisor", "arguments": {"wait_seconds": 20}}}],
            "configuration": {"lab": "stack", "replicas": 2, "supervisor": supervisor, "remediation": "none",
                              "stall_seconds": 3, "poll_interval_seconds": 0.5, "load_rate": 6,
                              "load_output_tokens": 256, "load_max_seconds": 60, "warmup_seconds": 1,
                              "simulator_options": {"max_num_seqs": 64}}}


def _call(name: str, module: str, func: str, **arguments) -> dict:
    return {"type": "action", "name": name,
            "provider": {"type": "python", "module": module, "func": func, "arguments": arguments}}


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_supervisor_drains_and_restarts_a_hung_simulator_replica(tmp_path):
    """The watchdog -> supervisor path without vLLM: the simulator's hang fault (tokens frozen, /health 200)."""
    need_stack_binaries()
    experiment = _supervised_stack_experiment([
        _call("hang", "forge.chaos.actions", "inject_fault", replica=1, mode="hang", require_running=True),
        _call("detect", "forge.chaos.actions", "await_hang_detection", replica=1, timeout_seconds=15),
        _call("drained", "forge.chaos.supervisor", "await_gateway_out", replica=1, timeout_seconds=15,
              measurement="drain_seconds", statuses=["DRAIN"]),
        _call("rejoined", "forge.chaos.supervisor", "await_rejoined", replica=1, timeout_seconds=40),
    ], {"poll_interval_seconds": 0.25, "restart_delay_seconds": 0})
    journal = run_experiment(experiment, tmp_path / "journal.json")
    m = journal.measurements
    assert journal.status == "completed", (journal.notes, [(a.name, a.exception) for a in journal.run])
    assert m["failure_seen_as"] == "hung"
    assert 3 <= m["detection_seconds"] <= 3 + 2 * 0.5 + 1  # stall + 2 polls (+ slack)
    assert m["detection_seconds"] <= m["drain_seconds"] < m["detection_seconds"] + 1.5
    assert m["drain_seconds"] < m["recovery_seconds"] < 30
    assert m["supervisor"]["replicas"] == {"replica-0": {"state": "up", "failures": 0, "restarts": 0},
                                           "replica-1": {"state": "up", "failures": 1, "restarts": 1}}


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_supervisor_retries_with_backoff_then_gives_up(tmp_path):
    """A replica that never comes back healthy (a start budget no engine meets): max_restarts attempts, the pause
    between them doubling from backoff_seconds, then `given-up` (the server stays drained)."""
    need_stack_binaries()
    experiment = _supervised_stack_experiment([
        _call("kill", "forge.chaos.supervisor", "kill_engine", replica=1),
        _call("down", "forge.chaos.supervisor", "await_gateway_out", replica=1, statuses=["DOWN"]),
    ], {"poll_interval_seconds": 0.25, "max_restarts": 3, "backoff_seconds": 0.5, "start_timeout_seconds": 0.001})
    lines: list[str] = []
    journal = run_experiment(experiment, tmp_path / "journal.json", log=lines.append)
    assert journal.status == "completed", journal.notes
    events = [e for e in journal.measurements["supervisor"]["events"] if e["replica"] == "replica-1"]
    kinds = [e["event"] for e in events]
    assert kinds == ["failed", "drained", "killed", *["restart-failed"] * 3, "given-up"], kinds
    failed_at = [e["seconds_since_start"] for e in events if e["event"] == "restart-failed"]
    gaps = [b - a for a, b in zip(failed_at, failed_at[1:])]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0, gaps  # 0.5 s, then 1 s (+ the start attempt itself)
    assert journal.measurements["supervisor"]["replicas"]["replica-1"]["state"] == "given-up"
    assert any("given-up" in line for line in lines)
