"""`forge readiness assess --baseline previous.json`: what got better or worse since the last assessment.

The comparison is checked on the report fixtures of test_reports.py (whose moves are known by construction), then
end to end through the CLI on the reference deployment, graded before and after load evidence is added: PERF-008
(no load results) gets fixed and PERF-010 (measured latency, the fixture misses the SLO) newly fails.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_reports import _md_tables, not_ready_assessment, ready_assessment

from forge.errors import InputError
from forge.readiness.baseline import attach, compare, load_baseline
from forge.readiness.reports import FORMATS, render
from forge.readiness.result import DIMENSIONS

ROOT = Path(__file__).resolve().parents[1]
LOAD = ROOT / "tests" / "fixtures" / "load" / "handmade_results.jsonl"
AS_OF = "2026-11-23"


# ------------------------------------------------------------------------------------------------ comparing
def test_compare_sorts_moves_into_new_fixed_and_changed():
    before, after = ready_assessment(), not_ready_assessment()
    # Same deployment, a month apart: the ready one is the past.
    b = compare(after, before.to_dict(), "prev.json")
    assert b["matched"] and b["source"] == "prev.json"
    assert b["score"] == {"before": before.score, "after": after.score, "delta": after.score - before.score}
    assert b["verdict"] == {"before": "ready", "after": "not_ready", "changed": True}
    assert [d["id"] for d in b["dimensions"]] == list(DIMENSIONS)
    rel = next(d for d in b["dimensions"] if d["id"] == "reliability")
    assert rel["before"] == 100 and rel["after"] < 60 and rel["delta"] == rel["after"] - 100
    assert (rel["status_before"], rel["status_after"]) == ("pass", "fail")
    new = {c["check"]: (c["before"], c["after"], c["direction"]) for c in b["findings"]["new"]}
    # Checks the earlier report did not have that now fail or warn are new; the ones it had are listed by status.
    assert new == {"REL-004": (None, "fail", "worse"), "REL-001": ("pass", "fail", "worse"),
                   "OBS-007": (None, "warn", "worse"), "SEC-003": (None, "fail", "worse")}
    fixed = {c["check"] for c in b["findings"]["fixed"]}
    assert fixed == set()
    changed = {c["check"]: (c["before"], c["after"]) for c in b["findings"]["changed"]}
    assert changed["PERF-008"] == ("warn", None)  # a check that is gone is not a fix: shown as a change
    assert changed["COST-002"] == (None, "waived")  # a new waiver is shown: accepted risk is a decision
    # A check passing in both is no move; one added or retired with nothing to report is only named.
    assert all("COR-001" not in moves for moves in (new, fixed, changed))
    assert b["checks_quiet"] == ["COST-001", "DEP-001", "DEP-002", "OBS-001", "SEC-001"]


def test_fixed_and_worse_in_the_other_direction():
    before, after = not_ready_assessment(), not_ready_assessment()
    for f in after.findings:
        if f.check == "REL-004":
            f.status = "pass"
        if f.check == "OBS-007":
            f.status = "fail"
    b = compare(after, before.to_dict(), "prev.json")
    assert [c["check"] for c in b["findings"]["fixed"]] == ["REL-004"]
    assert b["findings"]["changed"] == [{"check": "OBS-007", "title": "Every alert links to a runbook",
                                         "dimension": "observability", "severity": "high", "before": "warn",
                                         "after": "fail", "direction": "worse"}]
    assert b["findings"]["new"] == [] and b["checks_quiet"] == []


def test_attach_matches_a_fleet_by_file_then_name():
    ready, not_ready = ready_assessment(), not_ready_assessment()
    previous = [not_ready.to_dict(), ready.to_dict()]  # other order than now
    renamed = copy.deepcopy(ready)
    renamed.deployment = "chat-70b-v2"  # same file, new name: still the same deployment
    newcomer = copy.deepcopy(ready)
    newcomer.file, newcomer.deployment = "deploy/new.yaml", "brand-new"
    fleet = [renamed, not_ready, newcomer]
    attach(fleet, previous, Path("prev.json"))
    assert renamed.baseline["deployment"] == "chat-70b" and renamed.baseline["score"]["delta"] == 0
    assert not_ready.baseline["deployment"] == not_ready.deployment
    assert newcomer.baseline == {"source": "prev.json", "matched": False}
    md = render(fleet, "markdown")
    assert "not in prev.json (first assessment of this file)" in md


def test_attach_refuses_a_baseline_about_something_else():
    other = ready_assessment().to_dict()
    other["deployment"], other["file"] = "another", "deploy/another.yaml"
    with pytest.raises(InputError, match=r"--baseline prev.json: it is about 'another', not 'summarizer <8b>' — "):
        attach([not_ready_assessment()], [other], Path("prev.json"))


def test_load_baseline_reads_one_report_or_a_fleet(tmp_path):
    one, fleet = tmp_path / "one.json", tmp_path / "fleet.json"
    one.write_text(render([ready_assessment()], "json"))
    fleet.write_text(render([ready_assessment(), not_ready_assessment()], "json"))
    assert [p["deployment"] for p in load_baseline(one)] == ["chat-70b"]
    assert [p["deployment"] for p in load_baseline(fleet)] == ["chat-70b", "summarizer <8b>"]
    broken = json.loads(fleet.read_text())
    broken[1]["findings"] = [{"check": "X-1"}]  # no status
    fleet.write_text(json.dumps(broken))
    with pytest.raises(InputError, match="entry 1: 'findings' must be a list of objects with check and status"):
        load_baseline(fleet)


# ------------------------------------------------------------------------------------------------- every format
def test_every_format_shows_the_comparison():
    before, after = ready_assessment(), not_ready_assessment()
    attach([after], [dict(before.to_dict(), deployment=after.deployment, file=after.file)], Path("prev.json"))
    assert json.loads(render([after], "json"))["baseline"]["verdict"]["changed"] is True
    table = render([after], "table")
    assert "Since the baseline (prev.json, as of 2026-11-23)" in table
    assert f"score {before.score} → {after.score} (−{before.score - after.score})" in table
    assert "verdict READY → NOT READY" in table and "newly open (4)" in table
    md = render([after], "markdown")
    rows = [t for t in _md_tables(md) if t[0] == ["Change", "Check", "Title", "Before", "After"]][0][2:]
    assert rows[0][:2] == ["🔴 newly open", "OBS-007"] and ["⚪ status changed", "PERF-008"] in [r[:2] for r in rows]
    html = render([after], "html")
    assert "Since the last assessment" in html and 'class="baseline-chart"' in html
    assert f"{before.score} → {after.score}" in html and 'href="#deployment-1-REL-004"' in html
    for fmt in FORMATS:  # SARIF and JUnit are about findings, not history: they render as before
        assert render([after], fmt)


def test_no_baseline_no_section():
    a = ready_assessment()
    assert "baseline" not in json.loads(render([a], "json"))
    assert "Since the" not in render([a], "table") + render([a], "markdown") + render([a], "html")


# ---------------------------------------------------------------------------------------------------- the CLI
def forge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", "readiness", "assess", *args, "--as-of", AS_OF],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "previous.json"
    r = forge("reference-stack/deploy.yaml", "--format", "json", "--output", str(out))
    assert r.returncode in (0, 1) and out.is_file(), r.stderr
    return out


def test_cli_baseline_end_to_end(previous, tmp_path):
    r = forge("reference-stack/deploy.yaml", "--load-results", str(LOAD), "--format", "json",
              "--baseline", str(previous))
    assert r.returncode in (0, 1), r.stderr
    b = json.loads(r.stdout)["baseline"]
    assert b["matched"] and b["file"] == "reference-stack/deploy.yaml" and b["source"] == str(previous)
    assert {c["check"]: (c["before"], c["after"]) for c in b["findings"]["fixed"]}["PERF-008"] == ("warn", "pass")
    assert {c["check"]: (c["before"], c["after"]) for c in b["findings"]["new"]}["PERF-010"] == \
        ("not_applicable", "fail")
    perf = next(d for d in b["dimensions"] if d["id"] == "performance")
    assert perf["delta"] == perf["after"] - perf["before"] != 0
    md = forge("reference-stack/deploy.yaml", "--load-results", str(LOAD), "--format", "markdown",
               "--baseline", str(previous)).stdout
    assert "**Since the baseline**" in md and "| 🔴 newly open | PERF-010 |" in md
    # Against itself nothing moved.
    same = forge("reference-stack/deploy.yaml", "--format", "table", "--output", str(tmp_path / "t.txt"),
                 "--baseline", str(previous))
    assert same.returncode in (0, 1), same.stderr
    text = " ".join((tmp_path / "t.txt").read_text().split())  # rich wraps long lines
    verdict = "NOT READY" if same.returncode == 1 else "READY"
    assert f"(±0) · verdict {verdict} (unchanged) no check changed status" in text
