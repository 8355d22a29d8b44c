"""`forge capacity plan`: table and JSON output, exit 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from forge.readiness.capacity_cli import app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml"


def test_plan_json_has_the_issue_keys():
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kv_bytes_per_token"] == 81920
    assert [p["multiplier"] for p in data["growth"]] == [1.0, 3.0, 10.0]
    assert all(p["replicas_needed"] >= 1 for p in data["growth"])


def test_plan_table_shows_kv_tokens_and_growth():
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "KV tokens per replica" in result.stdout and "with headroom" in result.stdout


def test_plan_bad_input_exits_2(tmp_path):
    bad = tmp_path / "deploy.yaml"
    bad.write_text(EXAMPLE.read_text().replace("kv_heads: 8", "kv_heads: 7"))
    result = CliRunner().invoke(app, ["plan", str(bad)])
    assert result.exit_code == 2
    assert "kv_heads: 7 does not divide attention_heads 64" in result.output


def test_plan_html_is_self_contained_with_three_charts(tmp_path):
    out = tmp_path / "plan.html"
    result = CliRunner().invoke(app, ["plan", str(EXAMPLE), "--format", "html", "--output", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.count("<svg") == 3 and "default-src 'none'" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # The readiness report's look: its CSS variables are inlined, not linked.
    assert "--fail-bg" in page and "<link" not in page
    data = json.loads(CliRunner().invoke(app, ["plan", str(EXAMPLE), "--format", "json"]).stdout)
    for point in data["growth"]:  # the growth table shows the model's own replica counts
        assert f"<td>{point['replicas_needed']}</td><td>{point['replicas_with_headroom']}</td>" in page
    assert "TTFT SLO" in page and "Spot vs on-demand" in page
