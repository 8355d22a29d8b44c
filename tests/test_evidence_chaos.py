"""Chaos journals as readiness evidence: the reader (readiness/evidence_chaos.py), the drill checks
(readiness/checks/drills.py: REL-012/013/014, DEP-008, OPS-008) and `forge readiness assess --chaos-journal`.

One journal is produced here by the real runner (engine-hang on simulator replicas, ~20 s). The others are
fixtures in tests/fixtures/chaos/ (README there): engine-hang-undetected.json is real runner output too; the rest are
hand-written to the journal contract for drills Forge's runner does not run yet."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forge.chaos.journal import Journal
from forge.chaos.runner import load_experiment, run_experiment
from forge.errors import InputError
from forge.readiness.assess import assess_file
from forge.readiness.evidence_chaos import age_days, read_journal

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chaos"
AS_OF = dt.date(2026, 11, 23)


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.json"


def base() -> dict:
    return yaml.safe_load(GOOD.read_text())


def assess(tmp_path: Path, data: dict, journals: list[str] = (), as_of: dt.date = AS_OF):
    """Assess `data` as tmp_path/deploy.yaml with these fixture journals named on the command line."""
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return assess_file(path, as_of, {"chaos_journals": tuple(fixture(j) for j in journals)})


def finding(assessment, check_id: str):
    return next(f for f in assessment.findings if f.check == check_id)


def journal_copy(tmp_path: Path, name: str, **changes) -> Path:
    """A fixture journal with top-level keys or measurements changed (dates, figures) for one test."""
    data = json.loads(fixture(name).read_text())
    for key, value in changes.items():
        if key in ("start", "end", "status", "deviated"):
            data[key] = value
        else:
            data["measurements"][key] = value
    out = tmp_path / f"{name}-{len(list(tmp_path.glob('*.json')))}.json"
    out.write_text(json.dumps(data))
    return out


# ---------------------------------------------------------------------------------------- a real drill, read
@pytest.fixture(scope="module")
def real_hang_journal(tmp_path_factory) -> Path:
    """The bundled engine-hang experiment run by the real runner: two simulator replicas, load, the watchdog."""
    path = tmp_path_factory.mktemp("chaos") / "engine-hang.json"
    run_experiment(load_experiment("engine-hang"), path)
    return path


@pytest.mark.timeout(150)
def test_a_real_engine_hang_journal_is_evidence_that_the_hang_is_detected(real_hang_journal, tmp_path):
    raw = json.loads(real_hang_journal.read_text())
    record = read_journal(real_hang_journal)
    assert record["kind"] == "engine-hang" and record["status"] == "completed" and record["passed"] is True
    m = record["measurements"]
    assert m["detection_seconds"] == raw["measurements"]["detection_seconds"]
    assert 0 < m["detection_seconds"] <= m["stall_seconds"] + 2 and m["recovery_seconds"] > 0
    # The journal now counts what the fault cost: every request neither served nor cancelled by the rollback.
    lost = sum(n for k, n in raw["load"]["outcomes"].items() if k not in ("ok", "cancelled"))
    assert raw["measurements"]["lost_requests"] == m["lost_requests"] == lost and not record["lost_from_load"]

    today = dt.date.fromisoformat(raw["end"][:10])
    a = assess(tmp_path, base(), as_of=today, journals=())  # claims only
    assert finding(a, "REL-012").status == "warn" and finding(a, "REL-012").basis == "claim"
    a = assess_file(tmp_path / "deploy.yaml", today, {"chaos_journals": (real_hang_journal,)})
    rel = finding(a, "REL-012")
    assert (rel.status, rel.basis) == ("pass", "evidence"), rel.message
    assert f"hang detected in {m['detection_seconds']:g} s" in rel.message
    assert rel.evidence["detection_seconds"] == m["detection_seconds"] and rel.evidence["age_days"] == 0
    assert finding(a, "OPS-008").status == "pass" and "engine-hang passed 0 day(s) ago" in finding(a, "OPS-008").message
    # The report carries the measured timings next to their budgets.
    chaos = a.to_dict()["evidence"]["chaos"]
    assert [c["kind"] for c in chaos] == ["engine-hang"] and chaos[0]["detection_seconds"] == m["detection_seconds"]


def test_a_watchdog_the_deployment_does_not_run_is_not_credited(real_hang_journal, tmp_path):
    data = base()
    data["reliability"]["liveness"] = {"http_path": "/health"}
    a = assess_file(_write(tmp_path, data), AS_OF, {"chaos_journals": (real_hang_journal,)})
    rel = finding(a, "REL-012")
    assert rel.status == "warn" and "enables no progress watchdog" in rel.message
    assert finding(a, "REL-004").status == "fail"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------- the reader's errors
@pytest.mark.parametrize("name, expected", [
    ("missing", "no such file"),
    ("garbage", "not JSON (line 1, column 1"),
    ("not-a-journal", "not a chaos journal (no experiment and status)"),
    ("untagged", "experiment.tags names no drill kind — tag the experiment with exactly one of engine-hang"),
])
def test_unreadable_journals_are_one_line_errors(name, expected):
    with pytest.raises(InputError) as caught:
        read_journal(fixture(name))
    (message,) = caught.value.messages
    assert message.startswith(str(fixture(name))) and expected in message and "\n" not in message
    assert "—" in message  # and the fix


@pytest.mark.parametrize("change, expected", [
    ({"status": "done"}, "status 'done' is not a journal status — use one of completed, failed, aborted"),
    ({"end": "yesterday"}, "end 'yesterday' is not an ISO-8601 time"),
    ({"rollback_seconds": "fast"}, "measurements.rollback_seconds 'fast' is not a number of seconds ≥ 0"),
    ({"lost_requests": -1}, "measurements.lost_requests -1 is not a whole number ≥ 0"),
    ({"promoted": "yes"}, "measurements.promoted 'yes' is not true, false or null"),
    ({"deviated": "no"}, "deviated 'no' is not true or false"),
])
def test_malformed_journal_fields_are_named(tmp_path, change, expected):
    path = journal_copy(tmp_path, "bad-canary-rolled-back", **change)
    with pytest.raises(InputError) as caught:
        read_journal(path)
    assert expected in caught.value.messages[0]


def test_a_chaos_toolkit_journal_is_read_too(tmp_path):
    """chaostoolkit-lib's journal: naive UTC timestamps, no Forge keys, a failed activity's traceback as a list."""
    journal = {
        "chaoslib-version": "1.42.0", "platform": "Linux", "node": "ci",
        "experiment": {"title": "Canary with a broken model is rolled back", "tags": ["bad-canary", "argo"]},
        "start": "2026-11-20T09:00:00.123456", "end": "2026-11-20T09:09:00.654321", "duration": 540.5,
        "status": "failed", "deviated": False, "steady_states": {"before": {"steady_state_met": True}},
        "run": [{"activity": {"type": "probe", "name": "rollout-aborted"}, "status": "failed",
                 "exception": ["Traceback (most recent call last):\n", "  File \"x.py\", line 1\n",
                               "chaoslib.exceptions.ActivityFailed: rollout still progressing\n"]}],
        "rollbacks": [],
    }
    path = tmp_path / "journal.json"
    path.write_text(json.dumps(journal))
    record = read_journal(path)
    assert (record["kind"], record["status"], record["passed"]) == ("bad-canary", "failed", False)
    assert record["end"] == "2026-11-20T09:09:00.654321+00:00"
    assert record["failed_activity"] == "rollout-aborted: chaoslib.exceptions.ActivityFailed: rollout still progressing"
    assert record["measurements"]["rollback_seconds"] is None and record["measurements"]["lost_requests"] is None
    dep = finding(assess_file(_write(tmp_path, base()), AS_OF, {"chaos_journals": (path,)}), "DEP-008")
    assert dep.status == "fail" and "never rolled back" in dep.message and "ActivityFailed" in dep.message


def test_lost_requests_come_from_the_load_when_a_journal_does_not_state_them(tmp_path):
    data = json.loads(fixture("engine-hang-stale").read_text())
    assert "lost_requests" not in data["measurements"]
    record = read_journal(fixture("engine-hang-stale"))
    assert record["measurements"]["lost_requests"] == 4 and record["lost_from_load"]  # lost_mid_stream; not cancelled
    # chaos/journal.py derives the same figure when the experiment did not count it, and keeps one it did count.
    journal = Journal(experiment={"title": "t"})
    journal.load = {"outcomes": {"ok": 5, "http_error": 2, "timeout": 1, "cancelled": 3}}
    assert journal.as_dict()["measurements"]["lost_requests"] == 3
    journal.measurements["lost_requests"] = 0
    assert journal.as_dict()["measurements"]["lost_requests"] == 0


# --------------------------------------------------------------------------------- evidence beats the claim
def test_the_real_undetected_hang_contradicts_the_watchdog_claim(tmp_path):
    a = assess(tmp_path, base(), ["engine-hang-undetected"])
    rel = finding(a, "REL-012")
    assert (rel.status, rel.basis) == ("fail", "evidence")
    assert "hang NOT detected" in rel.message and "watchdog-detects-hang: TimeoutError" in rel.message
    assert "contradicts reliability.liveness.progress_watchdog (enabled, stall 30 s)" in rel.message
    assert finding(a, "REL-004").status == "pass"  # the claim alone still looks fine
    assert a.verdict == "not_ready" and any("Reliability" in r for r in a.verdict_reasons)


def test_slow_detection_fails_even_when_the_drill_completed(tmp_path):
    slow = journal_copy(tmp_path, "engine-hang-stale", detection_seconds=45.0)
    a = assess_file(_write(tmp_path, base()), AS_OF, {"chaos_journals": (slow,)})
    rel = finding(a, "REL-012")
    assert rel.status == "fail" and "hang detected after 45 s, over the 30 s budget" in rel.message


def test_a_drill_that_did_not_finish_proves_nothing_either_way(tmp_path):
    interrupted = journal_copy(tmp_path, "engine-hang-undetected", status="interrupted",
                               start="2026-11-23T12:00:00+00:00", end="2026-11-23T12:00:09+00:00")
    path = _write(tmp_path, base())
    alone = assess_file(path, AS_OF, {"chaos_journals": (interrupted,)})
    assert finding(alone, "REL-012").status == "warn" and "did not finish" in finding(alone, "REL-012").message
    # An earlier drill that ran to its verdict decides; the interrupted re-run is flagged as unfinished.
    a = assess_file(path, AS_OF, {"chaos_journals": (fixture("engine-hang-stale"), interrupted)})
    assert finding(a, "REL-012").status == "pass" and "hang detected in 24 s" in finding(a, "REL-012").message
    ops = finding(a, "OPS-008")
    assert ops.status == "warn" and "newest run did not finish, re-run it: engine-hang (interrupted)" in ops.message
    aborted = journal_copy(tmp_path, "bad-canary-never-rolled-back", status="aborted")
    dep = finding(assess_file(path, AS_OF, {"chaos_journals": (aborted,)}), "DEP-008")
    assert dep.status == "warn" and "the bad-canary drill did not finish (status aborted" in dep.message


def test_a_drill_with_a_shorter_stall_than_deployed_does_not_vouch_for_production(tmp_path):
    data = base()
    data["reliability"]["liveness"]["progress_watchdog"]["stall_seconds"] = 45
    rel = finding(assess(tmp_path, data, ["engine-hang-stale"]), "REL-012")
    assert rel.status == "warn" and "the deployed watchdog waits 45 s" in rel.message


def test_journal_age_is_counted_in_whole_days_from_its_end():
    record = read_journal(fixture("engine-hang-stale"))  # ended 2026-06-01 (UTC)
    assert age_days(record, dt.date(2026, 6, 1)) == 0 and age_days(record, dt.date(2026, 8, 30)) == 90
    assert age_days(record, dt.date(2026, 5, 31)) == 0  # as_of is a local date: a UTC day ahead is still today
    assert age_days(record, dt.date(2026, 5, 30)) == -2


def test_canary_drills_decide_dep_008(tmp_path):
    data = base()  # claims automated rollback in 120 s and a bad-canary game day
    a = assess(tmp_path, data, ["bad-canary-rolled-back", "good-canary-promoted"])
    dep = finding(a, "DEP-008")
    assert (dep.status, dep.basis) == ("pass", "evidence")
    assert dep.message == "bad canary rolled back in 95.4 s (< 300 s); good canary promoted"

    slow = finding(assess(tmp_path, data, ["bad-canary-slow-rollback"]), "DEP-008")
    assert slow.status == "fail" and "rollback measured 420 s (7.0 min), over the 300 s budget" in slow.message
    assert "contradicts rollout.rollback_seconds: 120" in slow.message

    never = finding(assess(tmp_path, data, ["bad-canary-never-rolled-back"]), "DEP-008")
    assert never.status == "fail" and "the bad canary was never rolled back" in never.message
    assert "canary-weight-reaches-zero: TimeoutError" in never.message
    assert "contradicts rollout.automated_rollback: true" in never.message

    healthy_aborted = finding(assess(tmp_path, data, ["bad-canary-rolled-back", "good-canary-rolled-back"]), "DEP-008")
    assert healthy_aborted.status == "fail" and "good canary was not promoted" in healthy_aborted.message

    # Within the budget but slower than claimed: the claim is contradicted, a warning to record the real time.
    data["rollout"]["rollback_seconds"] = 60
    over_claim = finding(assess(tmp_path, data, ["bad-canary-rolled-back"]), "DEP-008")
    assert over_claim.status == "warn" and "rollback measured 95.4 s — contradicts rollout.rollback_seconds: 60" \
        in over_claim.message


def test_without_a_canary_journal_dep_008_falls_back_to_the_claim(tmp_path):
    data = base()
    claimed = finding(assess(tmp_path, data), "DEP-008")
    assert (claimed.status, claimed.basis) == ("warn", "claim")
    assert "says bad-canary passed on 2026-10-21, but no bad-canary journal" in claimed.message
    data["reliability"]["chaos_experiments"] = ["gpu-fault", "nccl-hang"]
    never = finding(assess(tmp_path, data), "DEP-008")
    assert never.status == "fail" and never.message.startswith("rollback never tested")
    data["metadata"]["environment"] = "staging"  # the bar is production's
    assert finding(assess(tmp_path, data), "DEP-008").status == "warn"


def test_the_newest_drill_of_a_kind_decides(tmp_path):
    older_failure = journal_copy(tmp_path, "bad-canary-never-rolled-back", start="2026-10-01T10:00:00+00:00",
                                 end="2026-10-01T10:12:00+00:00")
    path = _write(tmp_path, base())
    a = assess_file(path, AS_OF, {"chaos_journals": (older_failure, fixture("bad-canary-rolled-back"))})
    assert finding(a, "DEP-008").status == "pass" and finding(a, "OPS-008").status == "pass"
    newer_failure = journal_copy(tmp_path, "bad-canary-never-rolled-back", start="2026-11-20T10:00:00+00:00",
                                 end="2026-11-20T10:12:00+00:00")
    a = assess_file(path, AS_OF, {"chaos_journals": (newer_failure, fixture("bad-canary-rolled-back"))})
    assert finding(a, "DEP-008").status == "fail"
    ops = finding(a, "OPS-008")
    assert ops.status == "fail" and ops.message.startswith("newest drill failed: bad-canary (status failed")


def test_gpu_fault_drill_loses_only_what_was_in_flight(tmp_path):
    ok = finding(assess(tmp_path, base(), ["gpu-fault-recovered"]), "REL-013")
    assert (ok.status, ok.basis) == ("pass", "evidence")
    assert ok.message == "replica removed after 3.1 s and replaced after 41 s, 2 lost of 2 in flight"
    bad = finding(assess(tmp_path, base(), ["gpu-fault-traffic-kept-going"]), "REL-013")
    assert bad.status == "fail" and "40 requests lost, more than the 6 in flight" in bad.message


def test_spot_drill_counts_requests_lost_with_the_drain(tmp_path):
    data = base()
    assert finding(assess(tmp_path, data, ["spot-drained"]), "REL-014").status == "not_applicable"
    data["hardware"]["capacity"] = "spot"
    data["reliability"]["spot_drain"] = {"enabled": True, "notice_source": "aws", "checkpoint_resume": True}
    assert finding(assess(tmp_path, data), "REL-014").status == "warn"
    ok = finding(assess(tmp_path, data, ["spot-drained"]), "REL-014")
    assert (ok.status, ok.basis) == ("pass", "evidence")
    assert ok.message == "0 requests lost with the drain (9 lost without it), drained in 21.5 s"
    lost = finding(assess(tmp_path, data, ["spot-lost-with-drain"]), "REL-014")
    assert lost.status == "fail" and "3 request(s) lost with the drain on" in lost.message
    assert "contradicts reliability.spot_drain (enabled)" in lost.message
    # A drain that fits AWS's two minutes is cut off by GCP's 30 s notice.
    data["reliability"]["spot_drain"]["notice_source"] = "gcp"
    slow = journal_copy(tmp_path, "spot-drained", drain_seconds=45.0)
    too_long = finding(assess_file(_write(tmp_path, data), AS_OF, {"chaos_journals": (slow,)}), "REL-014")
    assert too_long.status == "fail"
    assert "drain took 45 s, longer than gcp's 30 s interruption notice" in too_long.message


def test_journal_freshness_and_unreadable_journals_in_the_yaml(tmp_path):
    assert finding(assess(tmp_path, base()), "OPS-008").status == "not_applicable"
    stale = finding(assess(tmp_path, base(), ["engine-hang-stale", "gpu-fault-recovered"]), "OPS-008")
    assert stale.status == "warn" and stale.message == "older than 90 days: engine-hang 175 days old"
    assert finding(assess(tmp_path, base(), ["engine-hang-stale"], as_of=dt.date(2026, 8, 1)), "OPS-008").status \
        == "pass"
    # Journals named in deploy.yaml are relative to it; one that can't be read is a finding, not a crash.
    shutil.copy(fixture("gpu-fault-recovered"), tmp_path / "gpu.json")
    shutil.copy(fixture("garbage"), tmp_path / "garbage.json")
    data = base()
    data["evidence"] = {"chaos_journals": ["gpu.json", "garbage.json"]}
    a = assess(tmp_path, data)
    assert finding(a, "REL-013").status == "pass"
    ops = finding(a, "OPS-008")
    assert ops.status == "fail" and "1 chaos journal(s) unreadable" in ops.message and "garbage.json" in ops.message


# ------------------------------------------------------------------------------------------- end to end, CLI
def forge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_claims_fine_evidence_bad_is_not_ready_for_the_right_reasons(tmp_path):
    """deploy.yaml claims a progress watchdog and automated rollback in 2 minutes; the drills it hands in show the
    hang undetected (real runner output) and no canary drill at all."""
    data = base()
    data["reliability"]["chaos_experiments"] = [{"name": "nccl-hang", "last_run": "2026-11-23", "passed": True},
                                               {"name": "gpu-fault", "last_run": "2026-11-05", "passed": True}]
    path = _write(tmp_path, data)
    r = forge("readiness", "assess", str(path), "--format", "json", "--as-of", "2026-11-23",
              "--chaos-journal", str(fixture("engine-hang-undetected")),
              "--chaos-journal", str(fixture("gpu-fault-recovered")))
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["verdict"] == "not_ready"
    findings = {f["check"]: f for f in report["findings"]}
    for claim in ("REL-004", "DEP-001", "DEP-002", "DEP-005"):  # what the YAML says looks fine
        assert findings[claim]["status"] == "pass", findings[claim]
    rel, dep = findings["REL-012"], findings["DEP-008"]
    assert (rel["status"], rel["basis"]) == ("fail", "evidence")
    assert "hang NOT detected" in rel["message"]
    assert "contradicts reliability.liveness.progress_watchdog" in rel["message"]
    assert rel["evidence"]["journal"].endswith("engine-hang-undetected.json")
    assert dep["status"] == "fail" and dep["message"].startswith("rollback never tested")
    assert findings["REL-013"]["status"] == "pass"  # the good drill still counts
    assert any("Reliability" in reason for reason in report["verdict_reasons"])
    assert report["evidence"]["chaos"][0]["detection_seconds"] is None


def test_bad_chaos_journals_on_the_command_line_exit_2_with_one_line_each(tmp_path):
    r = forge("readiness", "assess", str(GOOD), "--chaos-journal", str(fixture("garbage")),
              "--chaos-journal", str(tmp_path / "nope.json"), "--output", str(tmp_path / "report.html"),
              "--format", "html")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("forge: error: --chaos-journal ") for line in lines)
    assert "garbage.json: not JSON" in lines[0] and "nope.json: no such file" in lines[1]
    assert not (tmp_path / "report.html").exists()


def test_journals_of_the_runners_canary_and_spot_drills_grade_as_evidence(tmp_path):
    """The runner's own bad-canary, good-canary and spot-interruption journals (fixtures: each run starts a stack)."""
    data = base()
    data["hardware"]["capacity"] = "spot"
    data["reliability"]["spot_drain"] = {"enabled": True, "notice_source": "aws", "checkpoint_resume": True}
    a = assess(tmp_path, data, ["bad-canary-runner", "good-canary-runner", "spot-interruption-runner"])
    dep, spot = finding(a, "DEP-008"), finding(a, "REL-014")
    bad = json.loads(fixture("bad-canary-runner").read_text())["measurements"]
    assert (dep.status, dep.basis) == ("pass", "evidence")
    assert dep.message == f"bad canary rolled back in {bad['rollback_seconds']:g} s (< 300 s); good canary promoted"
    assert (spot.status, spot.basis) == ("pass", "evidence")
    assert spot.message.startswith("0 requests lost with the drain")
    assert spot.evidence["lost_requests_without_drain"] > 0 and spot.evidence["in_flight_at_fault"] >= 0
    assert finding(a, "OPS-008").status == "pass" and a.verdict == "ready"


# ---------------------------------------------------------------------------------------- journals as game days
def test_journals_count_as_rehearsed_failure_modes(tmp_path):
    data = base()
    data.setdefault("reliability", {})["chaos_experiments"] = []
    data.setdefault("operations", {}).pop("last_game_day", None)
    claims_only = assess(tmp_path, data)
    assert finding(claims_only, "REL-008").status == "warn" and finding(claims_only, "REL-008").basis == "claim"
    assert finding(claims_only, "OPS-005").status == "fail"

    drilled = assess(tmp_path, data, ["gpu-fault-recovered", "engine-hang-stale", "bad-canary-rolled-back"])
    rel = finding(drilled, "REL-008")
    assert rel.basis == "evidence" and rel.evidence["journaled"] == ["bad-canary", "gpu-fault", "nccl-hang"]
    assert rel.status == ("warn" if data["hardware"].get("capacity") == "spot" else "pass"), rel.message
    ops = finding(drilled, "OPS-005")  # the newest journal (bad canary, ended 2026-11-12) is the last game day
    assert (ops.status, ops.basis, ops.evidence["last_game_day"]) == ("pass", "evidence", "2026-11-12")


def test_a_failed_drill_journal_is_a_failed_game_day(tmp_path):
    data = base()
    data.setdefault("reliability", {})["chaos_experiments"] = []
    a = assess(tmp_path, data, ["bad-canary-never-rolled-back"])
    rel = finding(a, "REL-008")
    assert rel.status == "fail" and "bad-canary" in rel.message and rel.basis == "evidence"


def test_the_nccl_drill_measured_on_two_h200s_is_readiness_evidence():
    """docs/measurements/collective-hang-h200x2.json: the collective-hang drill's journal from the GPU machine
    (docs/chaos.md). It reads as evidence of its kind, and says what the docs claim it measured."""
    path = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "collective-hang-h200x2.json"
    record = read_journal(path)
    assert (record["kind"], record["status"], record["deviated"]) == ("collective-hang", "completed", False)
    m = json.loads(path.read_text())["measurements"]
    assert m["backend"] == "nccl" and m["gpu_names"] == ["NVIDIA H200", "NVIDIA H200"]
    assert m["detection_seconds"] <= m["detection_bound_seconds"] < m["torch_timeout_detection_seconds"]
    assert m["processes_left"] == 0
