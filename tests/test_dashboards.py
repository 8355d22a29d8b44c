"""Grafana dashboards: committed JSON equals a fresh build, each dashboard is importable and reads only canonical
names, thresholds follow deploy.yaml, and every query is PromQL that promtool accepts."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forge.alerts.generate import DEFAULT_SLO
from forge.dashboards.build import BUILDERS, DashboardSettings, build_dashboards, settings_from_deployment
from forge.dashboards.cli import app, generate
from forge.dashboards.validate import (MIN_SCHEMA_VERSION, allowed_metric_names, as_promql, metric_names, panels,
                                       validate_dashboard)
from forge.loader import load

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "dashboards" / "generated"
REFERENCE_DEPLOY = ROOT / "reference-stack" / "deploy.yaml"
# (deploy file or None, committed directory): what `make`/the developer regenerates and commits.
BUILDS = [(None, GENERATED), (REFERENCE_DEPLOY, GENERATED / "reference-stack")]
COMMITTED = sorted(GENERATED.rglob("*.json"))
ENGINE_VARIABLES = {"datasource", "model", "replica", "team"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _panel(board: dict, title: str) -> dict:
    found = [p for p in panels(board) if p["title"] == title]
    assert len(found) == 1, f"{board['title']}: {len(found)} panels titled {title!r}"
    return found[0]


def _threshold_values(panel: dict) -> list[float]:
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]


@pytest.fixture(scope="module")
def allowed() -> set[str]:
    return allowed_metric_names()


# ----------------------------------------------------------------------------------------------- regeneration

@pytest.mark.parametrize("deploy, committed", BUILDS, ids=["generic", "reference-stack"])
def test_committed_json_equals_fresh_build(tmp_path, deploy, committed):
    written, _ = generate(deploy, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in committed.glob("*.json")), \
        "dashboard files differ — run `forge dashboards build` (and with --deploy reference-stack/deploy.yaml)"
    for fresh in written:
        assert fresh.read_text(encoding="utf-8") == (committed / fresh.name).read_text(encoding="utf-8"), \
            f"{committed / fresh.name} is stale — regenerate it with `forge dashboards build`"


def test_all_six_dashboards_with_distinct_uids():
    uids = [_load(p)["uid"] for p in COMMITTED]
    assert len(COMMITTED) == 2 * len(BUILDERS) == 12
    assert len(set(uids)) == len(uids), "two dashboards share a uid: importing one would replace the other"


# ----------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(GENERATED)))
def test_committed_dashboard_is_valid(path, allowed):
    board = _load(path)
    assert validate_dashboard(board, allowed) == []
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    names = {v["name"] for v in board["templating"]["list"]}
    if path.stem not in ("gpu-health", "slo-error-budget"):
        # GPU series carry dcgm-exporter's labels (no model/replica/team); SLO records are per model.
        assert ENGINE_VARIABLES <= names
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def _fleet() -> dict:
    return copy.deepcopy(build_dashboards()["fleet-overview.json"])


def test_validator_reports_duplicate_ids_and_old_schema(allowed):
    board = _fleet()
    board["panels"][1]["id"] = board["panels"][0]["id"]
    board["schemaVersion"] = 27
    problems = validate_dashboard(board, allowed)
    assert any("panel ids not unique" in p for p in problems)
    assert any("schemaVersion 27" in p for p in problems)


def test_validator_reports_empty_query_and_engine_native_name(allowed):
    board = _fleet()
    board["panels"][4]["targets"][0]["expr"] = "  "
    board["panels"][5]["targets"][0]["expr"] = 'sum(rate(vllm:request_success_total{model_name="x"}[5m]))'
    problems = validate_dashboard(board, allowed)
    assert any("empty query expr" in p for p in problems)
    assert any("vllm:request_success_total" in p for p in problems)


def test_validator_reports_missing_datasource_variable_and_hard_coded_datasource(allowed):
    board = _fleet()
    board["templating"]["list"] = [v for v in board["templating"]["list"] if v["name"] != "datasource"]
    board["panels"][0]["datasource"] = {"type": "prometheus", "uid": "my-prometheus"}
    problems = validate_dashboard(board, allowed)
    assert any("no `datasource` template variable" in p for p in problems)
    assert any("datasource is not ${datasource}" in p for p in problems)


def test_metric_names_parsed_out_of_promql():
    expr = ('histogram_quantile(0.95, sum by (model, le) (rate(forge_ttft_seconds_bucket{model=~"$model", '
            'le!="+Inf"}[$__rate_interval]))) / on (model) group_left max by (model) '
            '(model:forge_error_ratio:ratio_rate5m offset 5m) * 1e6 + count(DCGM_FI_DEV_GPU_UTIL == bool 0)')
    assert metric_names(expr) == {"forge_ttft_seconds_bucket", "model:forge_error_ratio:ratio_rate5m",
                                  "DCGM_FI_DEV_GPU_UTIL"}


def test_allowed_names_are_catalog_cost_series_and_recording_rules(allowed):
    assert {"forge_requests_total", "forge_ttft_seconds_bucket", "DCGM_FI_DEV_XID_ERRORS",
            "forge_cost_usd_total", "model:forge_ttft_slo_miss:ratio_rate1h"} <= allowed
    assert not {n for n in allowed if n.startswith(("vllm:", "sglang:", "tgi_", "trtllm_", "nv_"))}


# ----------------------------------------------------------------------------------------------- thresholds

def test_generic_thresholds_are_the_default_slos():
    boards = build_dashboards()
    fleet = boards["fleet-overview.json"]
    assert _threshold_values(_panel(fleet, "Time to first token")) == [DEFAULT_SLO.ttft_p95_seconds]
    assert _threshold_values(_panel(fleet, "Inter-token latency")) == [DEFAULT_SLO.itl_p95_seconds]
    assert _threshold_values(_panel(fleet, "Errors")) == [pytest.approx(1 - DEFAULT_SLO.availability)]


def test_thresholds_follow_the_deploy_yaml_slo(tmp_path):
    raw = yaml.safe_load(REFERENCE_DEPLOY.read_text(encoding="utf-8"))
    raw["slo"] = {"ttft_p95_seconds": 0.25, "itl_p95_seconds": 0.04, "e2e_p95_seconds": 7.5,
                  "availability": 0.995, "window_days": 7}
    raw["engine"]["args"]["max_num_seqs"] = 32
    deploy = tmp_path / "chat.yaml"
    deploy.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--deploy", str(deploy), "--out", str(out)])
    assert result.exit_code == 0, result.output
    fleet, slo = _load(out / "fleet-overview.json"), _load(out / "slo-error-budget.json")
    engine, capacity = _load(out / "engine-deep-dive.json"), _load(out / "capacity.json")

    assert _threshold_values(_panel(fleet, "Time to first token")) == [0.25]
    assert _threshold_values(_panel(fleet, "Inter-token latency")) == [0.04]
    assert _threshold_values(_panel(fleet, "End-to-end latency")) == [7.5]
    assert _threshold_values(_panel(fleet, "Errors")) == [pytest.approx(0.005)]
    assert 32 in _threshold_values(_panel(engine, "Running and waiting"))
    assert 32 in _threshold_values(_panel(capacity, "Running vs limit"))
    # The SLO window and budget reach the budget-left query.
    budget_left = _panel(slo, "Availability: error budget left")["targets"][0]["expr"]
    assert "[7d]" in budget_left and budget_left.endswith("/ 0.005")
    # The capacity model's prediction is the rate threshold, and it is the model's own figure.
    predicted = settings_from_deployment(load(deploy).deployment, tmp_path).capacity
    assert predicted is not None and predicted.max_requests_per_second_per_replica
    assert _threshold_values(_panel(capacity, "Request rate vs predicted capacity")) == \
        [pytest.approx(predicted.max_requests_per_second_per_replica, rel=1e-3)]


def test_slo_dashboard_has_one_burn_panel_per_declared_slo():
    from forge.alerts.generate import SloTargets

    only_availability = DashboardSettings(slo=SloTargets(availability=0.999, window_days=30))
    board = build_dashboards(only_availability)["slo-error-budget.json"]
    assert [p["title"] for p in panels(board)] == ["Availability: error budget left", "Availability: burn rate"]


# ----------------------------------------------------------------------------------------------- promtool

def _promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed — run `make promtool` (Debian package `prometheus`)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def _check_exprs(exprs: list[str], path: Path) -> subprocess.CompletedProcess:
    # Each expression as a recording rule: `promtool check rules` parses it with Prometheus' own parser.
    rules = [{"record": f"forge_dashboard_query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}), encoding="utf-8")
    return _promtool("check", "rules", str(path))


def test_every_query_is_valid_promql(tmp_path):
    exprs = [as_promql(t["expr"]) for path in COMMITTED for panel in panels(_load(path)) for t in panel["targets"]]
    assert len(exprs) > 50
    result = _check_exprs(exprs, tmp_path / "queries.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_catches_a_broken_query(tmp_path):
    result = _check_exprs(["sum by (model (rate(forge_requests_total[5m]))"], tmp_path / "broken.yaml")
    assert result.returncode != 0


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_bad_deploy_path_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["build", "--deploy", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no such file" in result.output and "Traceback" not in result.output


def test_cli_check_passes_committed_and_fails_a_broken_dashboard(tmp_path):
    assert CliRunner().invoke(app, ["check", str(GENERATED)]).exit_code == 0
    board = _fleet()
    board["panels"][0]["targets"][0]["expr"] = ""
    (tmp_path / "fleet-overview.json").write_text(json.dumps(board), encoding="utf-8")
    result = CliRunner().invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 2 and "empty query expr" in result.output
