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
