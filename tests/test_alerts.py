"""Alert rules: generated from the catalog and deploy.yaml, committed as generated, one runbook per alert."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forge import catalog
from forge.alerts import generate
from forge.alerts.cli import app, generate_file, rules_file_name
from forge.alerts.generate import (SRE_WORKBOOK_WINDOWS, Settings, SloTargets, build_rules,
                                   burn_factor, burn_windows, slo_bucket)
from forge.errors import InputError
from forge.exporters.config import Cost, Target, settings_from_deploy
from forge.exporters.cost import RECORDING_RULES, CostCollector
from forge.exporters.normalize import render_families
from forge.loader import load

ROOT = Path(__file__).resolve().parents[1]
ALERTS_DIR = ROOT / "alerts"
RUNBOOKS = ROOT / "runbooks"
REFERENCE_DEPLOY = ROOT / "reference-stack" / "deploy.yaml"
COMMITTED = {None: ALERTS_DIR / "forge-rules.yaml", REFERENCE_DEPLOY: ALERTS_DIR / "reference-stack-rules.yaml"}
CAT = catalog.get_catalog()

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan", "e"}
ENGINE_NATIVE_PREFIXES = tuple(p for d in CAT.dialects.values() if d.engine for p in d.detect)


def _rule_file(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: strip strings, label matchers, grouping clauses, ranges and
    function calls, then keep identifiers."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b[a-z_]+\s*\(", "(", text)  # function names
    found = set(re.findall(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)", text))
    return {name for name in found if name.lower() not in PROMQL_WORDS}


def canonical(name: str) -> bool:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in CAT.signals or (base in CAT.signals and CAT.signals[base].type == "histogram")


# ----------------------------------------------------------------------------------------------- committed files

@pytest.mark.parametrize("deploy", list(COMMITTED), ids=lambda d: "generic" if d is None else d.parent.name)
def test_committed_rule_file_equals_a_fresh_generation(deploy, tmp_path, monkeypatch):
    # From the repository root with a relative path, as `make alerts-build` runs it (the header names the command).
    monkeypatch.chdir(ROOT)
    fresh, _ = generate_file(deploy.relative_to(ROOT) if deploy else None, tmp_path)
    committed = COMMITTED[deploy]
    assert committed.read_text() == fresh.read_text(), f"{committed.name} is stale — run `make alerts-build`"


def test_file_names_follow_the_deploy_file():
    assert rules_file_name(None) == "forge-rules.yaml"
    assert rules_file_name(REFERENCE_DEPLOY) == "reference-stack-rules.yaml"
    assert rules_file_name(Path("fleet/chat.yaml")) == "chat-rules.yaml"


# ----------------------------------------------------------------------------------------------- every alert

ALL_ALERTS = {r["alert"]: r for path in COMMITTED.values() for r in _rule_file(path) if "alert" in r}


def test_every_alert_has_a_runbook_page_and_every_page_an_alert():
    pages = {p.stem for p in RUNBOOKS.glob("*.md")}
    assert set(ALL_ALERTS) - pages == set(), "alerts without a runbook page"
    assert pages - set(ALL_ALERTS) == set(), "runbook pages without an alert"


@pytest.mark.parametrize("name", sorted(ALL_ALERTS))
def test_alert_has_severity_annotations_and_its_runbook_url(name):
    rule = ALL_ALERTS[name]
    assert rule["labels"]["severity"] in ("page", "ticket", "info")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == f"{generate.DEFAULT_RUNBOOK_BASE_URL}{name}.md"


@pytest.mark.parametrize("name", sorted(ALL_ALERTS))
def test_runbook_page_has_every_section(name):
    text = (RUNBOOKS / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    for section in ("## What it means", "## Impact", "## Confirm", "## Mitigate", "## Escalate"):
        assert section in text, f"{name}.md lacks {section}"
    assert f"**{ALL_ALERTS[name]['labels']['severity']}**" in text, "the page states the alert's severity"


def test_rules_read_only_canonical_signals_and_their_own_recordings():
    for path in COMMITTED.values():
        rules = _rule_file(path)
        recorded = {r["record"] for r in rules if "record" in r}
        for rule in rules:
            assert not any(p in rule["expr"] for p in ENGINE_NATIVE_PREFIXES), rule["expr"]
            for name in metric_names(rule["expr"]):
                assert canonical(name) or name in recorded, f"{path.name}: {name!r} is neither a catalog signal " \
                                                            f"nor a recording rule ({rule.get('alert') or rule['record']})"


def test_runbook_queries_read_only_canonical_signals_and_recordings():
    recorded = {r["record"] for path in COMMITTED.values() for r in _rule_file(path) if "record" in r}
    for page in sorted(RUNBOOKS.glob("*.md")):
        blocks = re.findall(r"```promql\n(.*?)```", page.read_text(), flags=re.S)
        assert blocks, f"{page.name} has no PromQL to confirm with"
        for block in blocks:
            for line in block.splitlines():
                query = line.split("#", 1)[0]
                for name in metric_names(query):
                    assert canonical(name) or name in recorded, f"{page.name}: {name!r} in {line!r}"


def test_the_name_checker_catches_an_engine_native_name():
    assert metric_names('rate(vllm:num_preemptions_total[5m]) > 0') == {"vllm:num_preemptions_total"}
    assert not canonical("vllm:num_preemptions_total")
    assert metric_names('sum by (engine, le) (rate(forge_ttft_seconds_bucket{le="1.0"}[5m]))') == \
        {"forge_ttft_seconds_bucket"}


# ----------------------------------------------------------------------------------------------- recording rules

def test_every_derived_signal_has_a_recording_rule_built_from_its_catalog_template():
    records = {r.record: r.expr for r in build_rules().records()}
    for derived in CAT.derived.values():
        name = generate.derived_record_name(derived)
        assert name in records, derived.name
        assert records[name] == derived.expr("5m", "engine, model, replica")


def test_recording_rule_names_are_level_metric_operations():
    # The cost views keep the names they have had since the cost collector defined them (docs/exporter.md and
    # the cost dashboard cite them); every rule the generator names itself follows `level:metric:operations`.
    for rule in build_rules().records():
        if rule.record in RECORDING_RULES:
            continue
        assert re.fullmatch(r"(replica|model):[a-z][a-z0-9_]*:[a-z0-9_]+", rule.record), rule.record
    records = {r.record for r in build_rules().records()}
    assert "model:forge_ttft_seconds:p95_5m" in records


# ----------------------------------------------------------------------------------------------- burn rates

def test_burn_factors_are_the_sre_workbook_numbers_for_30_days():
    assert [(w.severity, w.long, w.short, f) for w, f in burn_windows(30)] == [
        ("page", "1h", "5m", 14.4), ("page", "6h", "30m", 6.0), ("ticket", "1d", "2h", 3.0), ("ticket", "3d", "6h", 1.0)]


def test_burn_factors_scale_with_the_window_and_never_drop_below_1():
    page_1h, page_6h, ticket_1d, ticket_3d = SRE_WORKBOOK_WINDOWS
    # 7 days = 168 h: 2% of the budget in 1 h is a 3.36x burn.
    assert burn_factor(page_1h, 7) == pytest.approx(3.36)
    assert burn_factor(page_6h, 7) == pytest.approx(1.4)
    assert burn_factor(ticket_3d, 7) == 1.0       # 0.23x would never exhaust the budget
    assert burn_factor(page_1h, 90) == pytest.approx(43.2)
    # A 1-day SLO can't be judged over 3 days.
    assert [w.long for w, _ in burn_windows(1)] == ["1h", "6h", "1d"]


def test_window_days_changes_the_thresholds_in_the_burn_alert():
    rules = build_rules(Settings(slo=SloTargets(availability=0.99, window_days=7)))
    fast = next(a for a in rules.alerts() if a.alert == "ForgeAvailabilitySLOFastBurn")
    assert "model:forge_error_ratio:ratio_rate1h > (3.36 * 0.01)" in fast.expr
    assert "1h/5m at 3.36x, 6h/30m at 1.4x" in fast.description


# ----------------------------------------------------------------------------------------------- latency SLI

def test_slo_bucket_is_the_threshold_or_the_next_bound_above():
    bounds = generate.VLLM_BUCKET_BOUNDS["forge_ttft_seconds"]
    assert slo_bucket("ttft", 0.5, bounds) == (0.5, True)
    assert slo_bucket("ttft", 0.3, bounds) == (0.5, False)
    assert slo_bucket("ttft", 0.0005, bounds) == (0.001, False)
    with pytest.raises(InputError, match="largest finite bucket"):
        slo_bucket("ttft", 5000, bounds)


def test_an_inexact_threshold_uses_the_next_bucket_and_says_so():
    rules = build_rules(Settings(slo=SloTargets(ttft_p95_seconds=0.3)))
    sli = next(r for r in rules.records() if r.record == "model:forge_ttft_slo_miss:ratio_rate1h")
    assert 'forge_ttft_seconds_bucket{le="0.5"}' in sli.expr
    assert any("0.3 s" in note and "0.5" in note for note in rules.notes)


def test_a_deploy_without_slos_gets_no_burn_alerts_and_a_note():
    rules = build_rules(Settings(slo=SloTargets()))
    names = {a.alert for a in rules.alerts()}
    assert not {n for n in names if "SLO" in n}
    assert "ForgeEngineHung" in names
    assert any("no SLO burn alerts" in note for note in rules.notes)


def test_reference_stack_rules_use_its_slos_and_expected_prefix_hit_ratio():
    settings = generate.settings_from_deployment(load(REFERENCE_DEPLOY).deployment)
    assert settings.slo == SloTargets(0.5, 0.05, 0.99, 30)
    rules = {r["alert"] if "alert" in r else r["record"]: r for r in _rule_file(COMMITTED[REFERENCE_DEPLOY])}
    assert 'le="0.5"' in rules["model:forge_ttft_slo_miss:ratio_rate1h"]["expr"]
    assert 'le="0.05"' in rules["model:forge_itl_slo_miss:ratio_rate1h"]["expr"]
    assert "< 0.5 * 0.15" not in rules["ForgePrefixCacheHitRatioDrop"]["expr"]
    assert rules["ForgePrefixCacheHitRatioDrop"]["expr"].rstrip().endswith("< 0.5 * 0.3")
    generic = {r.get("alert"): r for r in _rule_file(COMMITTED[None])}
    assert "avg_over_time" in generic["ForgePrefixCacheHitRatioDrop"]["expr"].split("<")[1]


# ----------------------------------------------------------------------------------------------- cost

def test_cost_group_is_the_cost_collectors_recording_rules_verbatim():
    for path in COMMITTED.values():
        groups = {g["name"]: g["rules"] for g in yaml.safe_load(path.read_text())["groups"]}
        cost = [name for name in groups if name.endswith("-cost")]
        assert len(cost) == 1, path.name
        assert {r["record"]: r["expr"] for r in groups[cost[0]]} == RECORDING_RULES
        assert {r["alert"] for r in groups[cost[0] + "-alerts"]} == {"ForgeCostPerMillionTokensOverBudget",
                                                                      "ForgeIdleGPUWaste"}


def test_catalog_cost_scope_is_exactly_what_the_cost_collector_serves():
    cost = Cost(2.0, 4, "H100-SXM-80GB", "on-demand", "deploy.yaml", budget_usd_per_1m_output_tokens=3.5)
    collector = CostCollector([Target(url="http://127.0.0.1:1/m", name="r0", model="m", cost=cost)])
    page = render_families(collector.families())
    types = dict(line.split(" ", 3)[2:] for line in page.splitlines() if line.startswith("# TYPE "))
    helps = dict(line.split(" ", 3)[2:] for line in page.splitlines() if line.startswith("# HELP "))
    scope = {s.name: s for s in CAT.signals_in_scope("cost")}
    assert set(types) == set(scope)
    for name, signal in scope.items():
        assert (types[name], helps[name]) == (signal.type, signal.help), name
    assert "forge_cost_budget_usd_per_1m_output_tokens" in page and " 3.5" in page
    # Without a budget in deploy.yaml there is no budget series (rather than a made-up one).
    plain = CostCollector([Target(url="http://127.0.0.1:1/m", name="r0", model="m",
                                  cost=Cost(2.0, 4, "H100-SXM-80GB", "on-demand", "deploy.yaml"))])
    assert "forge_cost_budget" not in render_families(plain.families())


def test_the_exporter_takes_the_budget_from_deploy_yaml():
    settings = settings_from_deploy(REFERENCE_DEPLOY, ["http://127.0.0.1:8000/metrics"], gpu_mode="off")
    budget = load(REFERENCE_DEPLOY).deployment.slo.cost_budget_usd_per_1m_output_tokens
    assert budget == 2.0
    assert settings.targets[0].cost.budget_usd_per_1m_output_tokens == budget


def test_cost_budget_is_a_number_from_deploy_yaml_or_the_budget_series_without_one():
    deploy = load(REFERENCE_DEPLOY).deployment
    with_budget = {a.alert: a for a in build_rules(generate.settings_from_deployment(deploy)).alerts()}
    over = with_budget["ForgeCostPerMillionTokensOverBudget"]
    assert over.expr == "(forge:cost_usd_per_1m_output_tokens < +Inf)\n> 2" and over.severity == "ticket"
    assert "budget of 2 USD" in over.description
    generic = {a.alert: a for a in build_rules().alerts()}["ForgeCostPerMillionTokensOverBudget"]
    assert "max by (team, cost_center, model) (forge_cost_budget_usd_per_1m_output_tokens)" in generic.expr
    assert "query" in generic.description   # the budget's live value, looked up for the model
    idle = with_budget["ForgeIdleGPUWaste"]
    assert idle.severity == "ticket" and "USD per hour wasted" in idle.description
    assert "forge_gpu_price_usd_per_hour" in idle.expr and "forge:idle_gpus" in idle.expr


# ----------------------------------------------------------------------------------------------- CLI

def test_cli_build_writes_the_file_named_after_the_deploy(tmp_path):
    result = CliRunner().invoke(app, ["build", "--deploy", str(REFERENCE_DEPLOY), "--out", str(tmp_path),
                                      "--runbook-base-url", "https://runbooks.example.com/forge"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "reference-stack-rules.yaml").read_text()
    assert "runbook_url: https://runbooks.example.com/forge/ForgeEngineHung.md" in text


def test_cli_bad_deploy_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "deploy.yaml"
    bad.write_text("apiVersion: forge/v1\nkind: InferenceDeployment\nmetadata: {name: x}\n")
    result = CliRunner().invoke(app, ["build", "--deploy", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert str(bad) in result.output


def test_cli_metrics_page_supplies_the_engine_bucket_bounds(tmp_path):
    # A 0.3 s TTFT SLO: vLLM's layout has no 0.3 bucket (next: 0.5), SGLang's has 0.2 and 0.4 (next: 0.4).
    raw = yaml.safe_load(REFERENCE_DEPLOY.read_text())
    raw["slo"]["ttft_p95_seconds"] = 0.3
    deploy = tmp_path / "chat.yaml"
    deploy.write_text(yaml.safe_dump(raw))
    page = ROOT / "tests" / "fixtures" / "metrics" / "sglang.txt"

    def ttft_sli(path: Path) -> str:
        return next(r["expr"] for r in _rule_file(path) if r.get("record") == "model:forge_ttft_slo_miss:ratio_rate1h")

    default, _ = generate_file(deploy, tmp_path / "vllm-layout.yaml")
    assert 'le="0.5"' in ttft_sli(default)
    from_page, notes = generate_file(deploy, tmp_path / "sglang-layout.yaml", metrics_page=page)
    assert 'le="0.4"' in ttft_sli(from_page)
    assert any("0.4 s" in note for note in notes)
    assert "--metrics-page" in from_page.read_text().splitlines()[0]


def test_the_default_runbook_links_are_the_published_repository_pages_of_files_that_exist():
    import tomllib

    urls = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["urls"]
    assert generate.DEFAULT_RUNBOOK_BASE_URL == urls["Repository"] + "/blob/main/runbooks/"
    assert urls["Runbooks"] == urls["Repository"] + "/tree/main/runbooks"
    runbooks = Path(__file__).resolve().parents[1] / "runbooks"
    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "alerts" / "forge-rules.yaml").read_text())
    linked = [r["annotations"]["runbook_url"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert linked and all((runbooks / url.removeprefix(generate.DEFAULT_RUNBOOK_BASE_URL)).is_file() for url in linked)

