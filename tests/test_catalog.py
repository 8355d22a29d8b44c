"""The signal catalog: consistent, cited, and covering what deploy.yaml and the readiness checks ask for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from forge import catalog
from forge.catalog import CatalogError, UnknownSignalError, load_catalog, render_markdown
from forge.catalog_cli import app

ROOT = Path(__file__).resolve().parent.parent
CAT = catalog.get_catalog()


def test_aliases_used_by_every_example_deploy_resolve():
    used = set()
    for path in sorted((ROOT / "readiness" / "examples").glob("*.yaml")):
        used |= set((yaml.safe_load(path.read_text()).get("observability") or {}).get("signals") or [])
    assert used, "the examples declare observability.signals"
    assert used <= catalog.signal_aliases(), used - catalog.signal_aliases()
    for alias in used:
        assert catalog.resolve(alias).name


@pytest.mark.parametrize("alias,name", [
    ("ttft", "forge_ttft_seconds"), ("itl", "forge_itl_seconds"), ("kv_cache_usage", "forge_kv_cache_usage_ratio"),
    ("requests_waiting", "forge_requests_waiting"), ("preemptions", "forge_preemptions_total"),
    ("prefix_cache_hit_ratio", "forge:prefix_cache_hit_ratio"), ("spec_acceptance_rate", "forge:spec_acceptance_rate"),
    ("error_ratio", "forge:error_ratio"), ("gpu_utilization", "DCGM_FI_DEV_GPU_UTIL"),
])
def test_readiness_aliases_point_at_the_right_signal(alias, name):
    assert catalog.resolve(alias).name == name


def test_resolve_accepts_canonical_names_and_rejects_unknown_in_one_line():
    assert catalog.resolve("forge_e2e_latency_seconds").type == "histogram"
    with pytest.raises(UnknownSignalError) as err:
        catalog.resolve("ttfb")
    assert "\n" not in str(err.value) and "'ttft'" in str(err.value)


def test_every_source_is_cited_and_non_vllm_sources_cite_their_own_project():
    project_of = {"vllm": "vllm-project/", "sglang": "sgl-project/", "tgi": "huggingface/text-generation-inference",
                  "trtllm": "NVIDIA/TensorRT-LLM", "triton_trtllm": "triton-inference-server/", "dcgm": "NVIDIA/"}
    for sig in CAT.signals.values():
        for dialect, mappings in sig.sources.items():
            for m in mappings:
                cite = CAT.citations[m.cite]
                assert cite["repo"].startswith(project_of[dialect]), (sig.name, dialect, cite["repo"])
                assert cite["path"]


def test_prometheus_naming_conventions():
    for sig in CAT.signals_in_scope("engine"):
        assert sig.name.startswith("forge_")
        if sig.type == "counter":
            assert sig.name.endswith("_total"), sig.name
        if sig.type == "histogram":
            assert sig.name.endswith("_seconds") and sig.unit == "seconds", sig.name
        if sig.unit == "ratio":
            assert sig.name.endswith("_ratio"), sig.name
    for sig in CAT.signals_in_scope("gpu"):
        assert sig.name.startswith(("DCGM_FI_DEV_", "DCGM_FI_PROF_"))


def test_issue_minimum_coverage_every_engine_has_its_core_signals():
    for name in ("forge_ttft_seconds", "forge_e2e_latency_seconds", "forge_queue_time_seconds",
                 "forge_requests_running", "forge_requests_waiting", "forge_requests_total",
                 "forge_prompt_tokens_total", "forge_generation_tokens_total"):
        sig = CAT.signals[name]
        for dialect in ("vllm", "sglang", "tgi", "trtllm", "triton_trtllm"):
            assert dialect in sig.sources or dialect in sig.unavailable, (name, dialect)


def test_otel_genai_names_units_and_buckets():
    expected = {"forge_ttft_seconds": "gen_ai.server.time_to_first_token",
                "forge_tpot_seconds": "gen_ai.server.time_per_output_token",
                "forge_e2e_latency_seconds": "gen_ai.server.request.duration"}
    for name, otel in expected.items():
        sig = CAT.signals[name]
        assert sig.otel_name == otel and sig.otel["unit"] == "s"
        assert sig.otel["buckets"] == sorted(sig.otel["buckets"]) and len(sig.otel["buckets"]) >= 13
    assert CAT.signals["forge_prompt_tokens_total"].otel["attributes"] == {"gen_ai.token.type": "input"}
    assert CAT.signals["forge_itl_seconds"].otel is None  # OTel's TPOT is per request, not a per-token gap


def test_derived_expressions_render_with_window_and_grouping():
    expr = catalog.resolve("prefix_cache_hit_ratio").expr(window="1m", by="model")
    assert "{window}" not in expr and "{by}" not in expr
    assert "rate(forge_prefix_cache_hits_total[1m])" in expr and "sum by (model)" in expr
    for derived in CAT.derived.values():
        assert derived.inputs() and derived.inputs() <= set(CAT.signals)


def _broken(tmp_path, edit) -> Path:
    raw = yaml.safe_load(catalog.CATALOG_PATH.read_text())
    edit(raw)
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r["aliases"].update(ttft="forge_nonexistent_seconds"), "aliases.ttft"),
    (lambda r: r["signals"]["forge_ttft_seconds"]["sources"]["vllm"][0].update(cite="nowhere"), "cites 'nowhere'"),
    (lambda r: r["signals"]["forge_preemptions_total"].update(type="summary"), "type 'summary'"),
    (lambda r: r["derived"]["forge:error_ratio"].update(expr="rate(forge_nope_total[{window}])"), "forge_nope_total"),
    (lambda r: r["signals"]["forge_requests_total"]["sources"]["tgi"][0].update(set_labels={"status": "ok"}), "status"),
])
def test_inconsistent_catalog_is_rejected_naming_the_key(tmp_path, edit, needle):
    with pytest.raises(CatalogError) as err:
        load_catalog(_broken(tmp_path, edit))
    assert needle in str(err.value)


def test_committed_docs_equal_a_fresh_generation():
    committed = (ROOT / "docs" / "signals.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), "run: python -m forge.catalog --markdown > docs/signals.md"


def test_docs_list_every_signal_and_alias():
    text = render_markdown()
    for name in [*CAT.signals, *CAT.derived, *CAT.aliases]:
        assert f"`{name}`" in text, name


def test_cli_list_json_is_complete():
    result = CliRunner().invoke(app, ["list", "--format", "json"])
    assert result.exit_code == 0
    records = json.loads(result.output)
    assert {r["name"] for r in records} == set(CAT.signals) | set(CAT.derived)
    ttft = next(r for r in records if r["name"] == "forge_ttft_seconds")
    assert ttft["otel"] == "gen_ai.server.time_to_first_token" and "vllm" in ttft["sources"]


def test_cli_list_table_and_show():
    assert "forge_kv_cache_usage_ratio" in CliRunner().invoke(app, ["list"]).output
    shown = CliRunner().invoke(app, ["show", "ttft"])
    assert shown.exit_code == 0
    assert "gen_ai.server.time_to_first_token" in shown.output and "sglang:time_to_first_token_seconds" in shown.output
    derived = CliRunner().invoke(app, ["show", "error_ratio"])
    assert derived.exit_code == 0 and "forge_requests_total" in derived.output


def test_cli_show_unknown_signal_exits_2_with_one_line():
    result = CliRunner().invoke(app, ["show", "ttfx"])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("forge: error: unknown signal 'ttfx'")
    assert "Traceback" not in result.output


def test_module_entry_point_renders_markdown(capsys):
    assert catalog.main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()
    assert catalog.main([]) == 2
