"""`forge exporter run|check`, exporter.yaml / deploy.yaml settings, and the cost collector."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from forge.errors import InputError
from forge.exporters.cli import app
from forge.exporters.config import Cost, Target, load_config, settings_from_deploy
from forge.exporters.cost import RECORDING_RULES, CostCollector
from forge.exporters.normalize import render_families
from forge.exporters.pageserver import PageServer

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]
VLLM = (ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32.txt").read_text(encoding="utf-8")
CHAT_70B = ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml"   # H100 x2, reserved, no price set
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- config

def test_config_file_gives_targets_labels_and_defaults(tmp_path):
    cfg = write(tmp_path, "exporter.yaml", """
labels: {team: search, cost_center: cc-7}
targets:
  - {url: "http://127.0.0.1:8000/metrics", replica: chat-0, engine: vllm, model: llama}
  - {url: "http://127.0.0.1:8001/metrics", replica: chat-1, labels: {team: ranking}}
""")
    settings = load_config(cfg)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 9400)
    first, second = settings.targets
    assert first.labels == {"team": "search", "cost_center": "cc-7"} and first.engine == "vllm"
    assert second.labels["team"] == "ranking" and second.engine is None
    assert first.cost is None   # no price anywhere: no cost series rather than a guess


@pytest.mark.parametrize("body, place, words", [
    ("targets:\n  - {url: 'http://127.0.0.1:1/m', replica: a, enigne: vllm}\n", ":3:", "targets.0.enigne: unknown key"),
    ("targets:\n  - {url: 'ftp://x/m', replica: a}\n", ":3:", "targets.0.url"),
    ("targets:\n  - {url: 'http://127.0.0.1:1/m', replica: a, engine: vllmm}\n", ":3:", "unknown engine 'vllmm'"),
    ("targets:\n  - {url: 'http://127.0.0.1:1/m', replica: a}\n  - {url: 'http://127.0.0.1:2/m', replica: a}\n",
     ":4:", "replica 'a' is also targets[0]'s"),
    ("listen: nine-four-hundred\ntargets:\n  - {url: 'http://127.0.0.1:1/m', replica: a}\n", ":2:",
     "is not host:port"),
    ("gpu: {mode: dcgm-exporter}\n", ":2:", "needs gpu.url"),
    ("labels: {replica: x}\ntargets:\n  - {url: 'http://127.0.0.1:1/m', replica: a}\n", ":2:",
     "reserved by the catalog"),
    ("targets: []\n", ":2:", "no targets and no GPU collector"),
    ("targets: [\n", ":", "malformed YAML"),
])
def test_bad_config_is_one_line_naming_the_place_and_exit_2(tmp_path, body, place, words):
    cfg = write(tmp_path, "exporter.yaml", "# exporter\n" + body)
    result = invoke("run", "--config", str(cfg), "--once")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith(f"forge: error: {cfg}{place}"), lines
    assert words in lines[0] and "Traceback" not in result.output


def test_run_needs_exactly_one_source_of_targets(tmp_path):
    result = invoke("run")
    assert result.exit_code == 2 and "either --config" in result.stderr
    result = invoke("run", "--deploy", str(CHAT_70B))
    assert result.exit_code == 2 and "--target" in result.stderr


def test_deploy_yaml_gives_team_cost_center_model_engine_and_catalog_price():
    settings = settings_from_deploy(CHAT_70B, ["http://127.0.0.1:8000/metrics", "http://127.0.0.1:8001/metrics"],
                                    gpu_mode="off")
    assert [t.name for t in settings.targets] == ["chat-70b-0", "chat-70b-1"]
    target = settings.targets[0]
    assert target.labels == {"team": "assistant-platform", "cost_center": "cc-4410"}
    assert (target.model, target.engine) == ("llama-3.1-70b-instruct-fp8", "vllm")
    from forge import hardware

    # reserved isn't priced in the catalog: hardware.GPU.price falls back to on-demand
    assert target.cost == Cost(hardware.get("H100-SXM-80GB").price("reserved"), 2, "H100-SXM-80GB", "reserved",
                               "catalog default")


def test_deploy_price_wins_over_the_catalog_and_dcgm_needs_a_url(tmp_path):
    text = CHAT_70B.read_text(encoding="utf-8").replace("  capacity: reserved\n",
                                                        "  capacity: reserved\n  price_per_gpu_hour: 2.25\n")
    deploy = write(tmp_path, "deploy.yaml", text)
    with pytest.raises(InputError, match="observability.gpu_metrics is dcgm-exporter — pass --dcgm-url"):
        settings_from_deploy(deploy, ["http://127.0.0.1:8000/metrics"])
    settings = settings_from_deploy(deploy, ["http://127.0.0.1:8000/metrics"], dcgm_url="http://127.0.0.1:9401/m")
    assert settings.targets[0].cost.price_per_gpu_hour == 2.25
    assert settings.targets[0].cost.price_source == "deploy.yaml"
    assert [(t.kind, t.url) for t in settings.targets][-1] == ("dcgm", "http://127.0.0.1:9401/m")


# ----------------------------------------------------------------------------------------------- cost

def test_cost_accrues_price_times_gpus_times_hours_with_chargeback_labels():
    now = [1000.0]
    owner = {"team": "search", "cost_center": "cc-7", "extra": "dropped"}
    targets = [Target(url="http://127.0.0.1:1/m", name="r0", model="llama", labels=owner,
                      cost=Cost(3.78, 2, "H100-SXM-80GB", "on-demand", "catalog default")),
               Target(url="http://127.0.0.1:2/m", name="r1", labels={"team": "search"})]   # no price: no cost
    collector = CostCollector(targets, clock=lambda: now[0])
    now[0] += 1800   # half an hour
    page = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(render_families(collector.families())) for s in f.samples}
    key = (("cost_center", "cc-7"), ("model", "llama"), ("replica", "r0"), ("team", "search"))
    assert page[("forge_cost_usd_total", key)] == pytest.approx(3.78 * 2 * 0.5)
    assert page[("forge_replica_gpus", key)] == 2
    price_key = tuple(sorted(key + (("accelerator", "H100-SXM-80GB"), ("capacity", "on-demand"),
                                    ("price_source", "catalog default"))))
    assert page[("forge_gpu_price_usd_per_hour", price_key)] == 3.78
    assert not [k for k in page if dict(k[1]).get("replica") == "r1"]


def test_cost_recording_rules_are_valid_promql(tmp_path):
    import shutil
    import subprocess

    import yaml

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (mk/monitoring.mk)")
    rules = {"groups": [{"name": "forge-cost", "rules": [{"record": k, "expr": v} for k, v in RECORDING_RULES.items()]}]}
    path = write(tmp_path, "rules.yaml", yaml.safe_dump(rules))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ----------------------------------------------------------------------------------------------- commands

def test_run_once_prints_a_valid_page_with_engine_self_and_cost_series(tmp_path):
    with PageServer() as server:
        cfg = write(tmp_path, "exporter.yaml", f"""
labels: {{team: search}}
cost: {{price_per_gpu_hour: 1.5, gpus_per_replica: 4}}
targets:
  - {{url: "{server.route('/m', text=VLLM)}", replica: chat-0, model: tiny}}
""")
        result = invoke("run", "--config", str(cfg), "--once")
    assert result.exit_code == 0, result.output
    names = {f.name for f in text_string_to_metric_families(result.stdout)}
    assert {"forge_ttft_seconds", "forge_engine_up", "forge_exporter_scrape_duration_seconds",
            "forge_gpu_price_usd_per_hour", "forge_cost_usd", "forge_exporter_build_info"} <= names
    assert 'forge_engine_up{engine="vllm",model="tiny",replica="chat-0",team="search"} 1.0' in result.stdout


def test_check_lists_provided_and_missing_signals_as_json():
    with PageServer() as server:
        result = invoke("check", server.route("/m", text=VLLM), "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["dialect"] == "vllm"
    assert {"forge_ttft_seconds", "forge_kv_cache_usage_ratio", "forge_requests_total"} <= set(report["provided"])
    # This page comes from a run without speculative decoding: its counters are absent, and said so.
    assert "forge_spec_decode_draft_tokens_total" in report["missing"]
    status = {s["signal"]: s["status"] for s in report["signals"]}
    assert status["forge_prefix_cache_hit_ratio"] == "superseded"


def test_check_table_and_a_down_target():
    with PageServer() as server:
        table = invoke("check", server.route("/m", text=VLLM))
        down = invoke("check", server.route("/html", text="<html></html>"), "--format", "json")
    assert table.exit_code == 0 and "forge_ttft_seconds" in table.stdout and "provided" in table.stdout
    assert down.exit_code == 1
    assert json.loads(down.stdout)["reason"] == "invalid_page"
    bad = invoke("check", "not a url")
    assert bad.exit_code == 2 and bad.stderr.startswith("forge: error: URL:")


def test_a_bare_host_and_port_means_its_metrics_path():
    with PageServer() as server:
        page = server.route("/metrics", text=VLLM)
        bare = page.removesuffix("/metrics")
        result = invoke("check", bare + "/", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["url"] == page and report["ok"]
