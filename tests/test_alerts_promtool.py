"""The generated rules through Prometheus' own promtool: syntax (`check rules`) and behaviour (`test rules`).

promtool comes from Debian's `prometheus` package, installed by `make test` (mk/monitoring.mk)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS_DIR = ROOT / "alerts"
RULE_FILES = [ALERTS_DIR / "forge-rules.yaml", ALERTS_DIR / "reference-stack-rules.yaml"]
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.test.yaml"))


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed — run `make promtool` (Debian package `prometheus`)")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(rule_file):
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file):
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def _cases(test_file: Path) -> list[dict]:
    return [case for test in yaml.safe_load(test_file.read_text())["tests"] for case in test["alert_rule_test"]]


def test_every_generic_alert_is_tested_firing_and_not_firing():
    alerts = {r["alert"] for g in yaml.safe_load(RULE_FILES[0].read_text())["groups"] for r in g["rules"]
              if "alert" in r}
    cases = _cases(ALERTS_DIR / "tests" / "forge-rules.test.yaml")
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts - fired == set(), "alerts no promtool test sees firing"
    assert alerts - quiet == set(), "alerts no promtool test sees staying quiet"


def test_the_unit_tests_fail_when_a_rule_changes(tmp_path):
    # The same tests against a rule file whose KV threshold moved from 0.9 to 0.99 must fail: they test the
    # rules, not themselves.
    (tmp_path / "tests").mkdir()
    shutil.copy(ALERTS_DIR / "tests" / "forge-rules.test.yaml", tmp_path / "tests")
    text = RULE_FILES[0].read_text()
    marker = "max by (engine, model, replica) (forge_kv_cache_usage_ratio) > 0.9"
    assert marker in text
    (tmp_path / "forge-rules.yaml").write_text(text.replace(marker, marker + "9"))
    result = promtool("test", "rules", "tests/forge-rules.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "ForgeKVCacheNearFull" in result.stdout + result.stderr
