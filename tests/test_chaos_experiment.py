"""End to end: `forge chaos run engine-hang` against simulator replicas it starts on 127.0.0.1 with load running;
the journal (Chaos Toolkit fields + Forge measurements), rollbacks on success and on Ctrl-C, nothing left behind.
Each run is bounded (~20 s)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from forge.chaos import actions
from forge.chaos.cli import app
from forge.chaos.runner import list_experiments, load_experiment, run_experiment, substitute, within_tolerance

pytestmark = pytest.mark.timeout(150)
STALL, POLL = 5.0, 0.5
SCRAPE_ALLOWANCE_S = 0.3  # a scrape of two local pages, plus thread wake-up


def simulator_children() -> list[int]:
    """Simulator processes this test process started and that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and "forge.reference_stack.simulator" in cmdline:
            found.append(int(entry.name))
    return found


def assert_nothing_left(journal: dict) -> None:
    assert simulator_children() == []
    for replica in journal["measurements"]["replicas"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(replica["url"] + "/health", timeout=2)


def test_engine_hang_experiment_detects_restarts_and_journals(tmp_path):
    journal_path = tmp_path / "journal.json"
    result = CliRunner().invoke(app, ["run", "engine-hang", "--journal", str(journal_path),
                                      "--stall-seconds", str(STALL)])
    assert result.exit_code == 0, result.output
    journal = json.loads(journal_path.read_text())

    # Chaos Toolkit's journal fields.
    for key in ("experiment", "start", "end", "duration", "status", "deviated", "steady_states", "run", "rollbacks"):
        assert key in journal, key
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    assert len(journal["steady_states"]["before"]["probes"]) == 4
    for activity in journal["run"] + journal["rollbacks"]:
        assert {"activity", "start", "end", "duration", "status", "output"} <= set(activity)
        assert activity["status"] == "succeeded", activity
    assert [a["activity"]["name"] for a in journal["rollbacks"]] == ["clear-faults-on-every-replica", "stop-load"]
    assert sorted(journal["rollbacks"][0]["output"]["cleared"]) == ["replica-0", "replica-1"]

    # Forge's measurements: detection within the watchdog's bound, after the stall could have elapsed.
    m = journal["measurements"]
    assert m["stall_seconds"] == STALL and m["poll_interval_seconds"] == POLL
    assert STALL - POLL <= m["detection_seconds"] <= STALL + 2 * POLL + SCRAPE_ALLOWANCE_S
    assert 0 < m["recovery_seconds"] < 20
    assert [e["state"] for e in m["watchdog_events"] if e["replica"] == "replica-0"] == []  # never flagged
    assert [e["state"] for e in m["watchdog_events"] if e["replica"] == "replica-1"][0] == "hung"
    injected = journal["run"][0]["output"]
    assert injected["replica"] == "replica-1" and injected["requests_running_at_injection"] > 0

    # Load outcomes: the healthy replica served throughout; the hung one lost what it held at the restart.
    load = journal["load"]
    assert load["requests"] == sum(load["outcomes"].values()) > 0
    healthy, hung = load["outcomes_by_replica"]["replica-0"], load["outcomes_by_replica"]["replica-1"]
    assert healthy.get("ok", 0) > 0 and set(healthy) <= {"ok", "cancelled"}
    assert hung.get("ok", 0) > 0 and sum(v for k, v in hung.items() if k not in ("ok", "cancelled")) > 0
    assert "detection" in result.output and "journal" in result.output
    assert_nothing_left(journal)


def test_rollbacks_run_and_processes_stop_on_ctrl_c(tmp_path, monkeypatch):
    def interrupt(lab, **arguments):
        raise KeyboardInterrupt

    monkeypatch.setattr(actions, "await_hang_detection", interrupt)
    journal_path = tmp_path / "journal.json"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_experiment("engine-hang"), journal_path, overrides={"stall_seconds": STALL})
    journal = json.loads(journal_path.read_text())
    assert journal["status"] == "interrupted"
    assert [a["activity"]["name"] for a in journal["run"]] == ["hang-generation-on-replica"]
    # The hang was really injected, then cleared by the rollback while the replica was still up.
    assert journal["run"][0]["output"]["active"] == {"hang": {}}
    assert [a["status"] for a in journal["rollbacks"]] == ["succeeded", "succeeded"]
    assert "replica-1" in journal["rollbacks"][0]["output"]["cleared"]
    assert journal["measurements"]["detection_seconds"] is None
    assert_nothing_left(journal)


def test_cli_list_and_bad_input(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0 and "engine-hang" in listed.output
    assert runner.invoke(app, ["run", "no-such-experiment"]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nmethod:\n  - {type: action, name: x, provider: {type: python, module: os, func: system}}\n")
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2 and "not allowed" in result.output
    # Rejected before anything starts: nothing to roll back, no journal.
    assert runner.invoke(app, ["run", "engine-hang", "--stall-seconds", "0.2",
                               "--journal", str(tmp_path / "j.json")]).exit_code == 2
    assert not (tmp_path / "j.json").exists() and simulator_children() == []
    assert runner.invoke(app, ["watchdog", "--target", "http://127.0.0.1:1", "--stall-seconds", "3",
                               "--poll-interval", "2"]).exit_code == 2


def test_bundled_experiment_shape_and_helpers():
    assert "engine-hang" in [name for name, _ in list_experiments()]  # other experiments sit beside it
    experiment = load_experiment("engine-hang")
    assert {"title", "description", "steady-state-hypothesis", "method", "rollbacks"} <= set(experiment)
    assert all("tolerance" in p for p in experiment["steady-state-hypothesis"]["probes"])
    assert substitute({"a": "${n}", "b": "x${n}"}, {"n": 1}) == {"a": 1, "b": "x1"}
    assert within_tolerance({"status": 200, "body": ""}, 200) and not within_tolerance({"status": 500}, 200)
    assert within_tolerance(3, {"type": "range", "range": [1, 5]}) and not within_tolerance(True, 1)


def test_ctrl_c_in_a_terminal_exits_130_after_rollbacks_and_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    journal_path = tmp_path / "journal.json"
    # Its own session, signalled as a whole: what Ctrl-C in a terminal does (the engines get SIGINT too).
    process = subprocess.Popen([sys.executable, "-c", "from forge.chaos.cli import app; app(prog_name='forge chaos')",
                                "run", "engine-hang", "--journal", str(journal_path)],
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        output = ""
        while "hang-generation-on-replica" not in output:  # interrupt while the replica is hung
            assert time.monotonic() < deadline and process.poll() is None, output
            output += process.stdout.readline()
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, output + rest
    journal = json.loads(journal_path.read_text())
    assert journal["status"] == "interrupted"
    assert [(a["activity"]["name"], a["status"]) for a in journal["rollbacks"]] == [
        ("clear-faults-on-every-replica", "succeeded"), ("stop-load", "succeeded")]
    cleared = journal["rollbacks"][0]["output"]
    assert sorted(cleared["cleared"] + cleared["process_gone"]) == ["replica-0", "replica-1"]
    for replica in journal["measurements"]["replicas"]:
        with pytest.raises(httpx.ConnectError):
            httpx.get(replica["url"] + "/health", timeout=2)
    session = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _session_of(p) == process.pid]
    assert session == []


def _session_of(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None
