"""The `forge` CLI as a user runs it: exit codes, formats, explain, schema, fleets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forge.schema import json_schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "readiness" / "examples"
GOOD = EXAMPLES / "chat-70b-fp8-h100.yaml"
AS_OF = "2026-11-23"


def forge(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_ready_file_exits_0_and_not_ready_exits_1():
    ok = forge("readiness", "assess", str(GOOD), "--as-of", AS_OF, "--format", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "ready"
    bad = forge("readiness", "assess", str(EXAMPLES / "spot-fleet-8b.yaml"), "--as-of", AS_OF, "--format", "json")
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["verdict"] == "not_ready"


def test_fail_on_warn_is_stricter():
    strict = forge("readiness", "assess", str(GOOD), "--as-of", AS_OF, "--format", "json", "--fail-on", "warn")
    has_warnings = any(f["status"] in ("warn", "fail") for f in json.loads(strict.stdout)["findings"])
    assert strict.returncode == (1 if has_warnings else 0)
    assert has_warnings  # the good example still has open warnings (e.g. no load evidence yet)


def test_several_files_give_an_array_and_the_worst_exit_code():
    r = forge("readiness", "assess", str(GOOD), str(EXAMPLES / "spot-fleet-8b.yaml"), "--as-of", AS_OF,
              "--format", "json")
    data = json.loads(r.stdout)
    assert [d["deployment"] for d in data] == ["chat-70b", "extraction-spot"]
    assert r.returncode == 1


def test_a_directory_is_a_fleet():
    r = forge("readiness", "assess", str(EXAMPLES), "--as-of", AS_OF, "--format", "json")
    data = json.loads(r.stdout)
    assert len(data) == len(list(EXAMPLES.glob("*.yaml")))
    assert r.returncode == 1


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "html", "sarif", "junit"])
def test_every_format_writes_a_file(tmp_path, fmt):
    out = tmp_path / f"report.{fmt}"
    r = forge("readiness", "assess", str(GOOD), "--as-of", AS_OF, "--format", fmt, "--output", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "chat-70b" in text
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_table_output_to_terminal_names_verdict_and_findings():
    r = forge("readiness", "assess", str(EXAMPLES / "spot-fleet-8b.yaml"), "--as-of", AS_OF)
    assert r.returncode == 1
    assert "REL-001" in r.stdout
    assert "NOT READY" in r.stdout.upper()


def test_checks_json_lists_every_check():
    r = forge("readiness", "checks", "--format", "json")
    checks = json.loads(r.stdout)
    assert len(checks) >= 40
    assert {"id", "dimension", "severity", "title", "rationale", "remediation"} <= set(checks[0])
    only = json.loads(forge("readiness", "checks", "--format", "json", "--dimension", "security").stdout)
    assert only and all(c["dimension"] == "security" for c in only)


def test_explain_shows_rationale_and_fix():
    r = forge("readiness", "explain", "rel-004")
    assert r.returncode == 0
    assert "progress watchdog" in r.stdout.lower() and "Fix" in r.stdout


def test_explain_unknown_check_suggests_close_ids():
    r = forge("readiness", "explain", "REL-04")
    assert r.returncode == 2
    assert "REL-004" in r.stderr and "Traceback" not in r.stderr


def test_committed_schema_equals_a_fresh_generation():
    committed = json.loads((ROOT / "readiness" / "deploy.schema.json").read_text())
    assert committed == json_schema(), "run `make schema` and commit readiness/deploy.schema.json"


def test_schema_validates_every_example_and_rejects_unknown_keys():
    import jsonschema

    validator = jsonschema.Draft202012Validator(json_schema())
    for path in sorted(EXAMPLES.glob("*.yaml")) + [ROOT / "reference-stack" / "deploy.yaml"]:
        data = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        errors = list(validator.iter_errors(data))
        assert not errors, (path.name, errors[0].message)
    data = yaml.safe_load(GOOD.read_text())
    data["metadata"]["nmae"] = "typo"
    assert list(validator.iter_errors(json.loads(json.dumps(data, default=str))))


def test_version():
    r = forge("version")
    assert r.returncode == 0 and r.stdout.startswith("forge ")


def test_no_arguments_shows_help_and_bad_command_exits_2():
    assert "readiness" in forge("--help").stdout
    r = forge("readines")
    assert r.returncode == 2


def test_load_results_on_the_command_line_become_evidence(tmp_path):
    bench = ROOT / "tests" / "fixtures" / "load" / "vllm_bench_serve.json"
    r = forge("readiness", "assess", str(GOOD), "--as-of", AS_OF, "--format", "json", "--load-results", str(bench))
    findings = {f["check"]: f for f in json.loads(r.stdout)["findings"]}
    assert findings["PERF-008"]["status"] == "pass" and findings["PERF-008"]["basis"] == "evidence"
    assert findings["PERF-010"]["status"] == "pass"
    missing = forge("readiness", "assess", str(GOOD), "--load-results", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "--load-results" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------- `readiness assess` without typer (forge.cli_assess)
def _through(entry: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; from forge.cli import {entry}; sys.argv[0] = 'forge'; {entry}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("args", [
    ["readiness", "assess", str(GOOD), "--as-of", AS_OF, "--format", "json"],
    ["readiness", "assess", str(GOOD), f"--as-of={AS_OF}", "-f", "markdown", "--fail-on", "warn"],
    ["readiness", "assess", str(EXAMPLES / "spot-fleet-8b.yaml"), "--as-of", AS_OF],
    ["readiness", "assess", str(GOOD), "--as-of", "2026-13-01"],
    ["readiness", "assess", str(GOOD), "--load-results", "nope.json", "--load-results", "nope2.json"],
    ["readiness", "assess", "nope.yaml", "--format", "json"],
    ["readiness", "assess", str(GOOD), "--format", "xml"],       # typer's own errors: the fast path declines
    ["readiness", "assess", str(GOOD), "--form", "json"],
    ["readiness", "assess", str(GOOD), "--format", "json", "--format", "sarif"],
    ["readiness", "assess"],
])
def test_assess_gives_the_same_output_and_exit_code_with_or_without_typer(args):
    fast, typed = _through("main", *args), _through("main_typer", *args)
    assert (fast.returncode, fast.stdout, fast.stderr) == (typed.returncode, typed.stdout, typed.stderr)
    assert fast.returncode in (0, 1, 2) and "Traceback" not in fast.stderr


def test_the_fast_path_takes_only_command_lines_it_fully_understands():
    from forge.cli_assess import FailOn, Format, parse_assess_args

    good = parse_assess_args(["readiness", "assess", str(GOOD), "-f", "json", "--load-results=a.json",
                              "--load-results", "b.json", "--fail-on", "warn", "--as-of", AS_OF])
    assert good == {"files": [GOOD], "format": Format.json, "load_results": [Path("a.json"), Path("b.json")],
                    "fail_on": FailOn.warn, "as_of": AS_OF}
    for declined in (["readiness", "assess"], ["readiness", "assess", str(GOOD), "--help"],
                     ["readiness", "assess", str(GOOD), "--format", "JSON"],
                     ["readiness", "assess", str(GOOD), "--format"], ["readiness", "assess", str(GOOD), "-fjson"],
                     ["readiness", "assess", str(GOOD), "--as-of", "1", "--as-of", "2"],
                     ["readiness", "assess", "--", str(GOOD)], ["readiness", "assess", str(GOOD), "--output", "-x"],
                     ["readiness", "checks"], ["--help"]):
        assert parse_assess_args(declined) is None, declined


def test_the_fast_path_knows_exactly_the_options_typer_declares():
    import typer.main

    from forge.cli import app
    from forge.cli_assess import ASSESS_OPTIONS

    readiness = typer.main.get_command(app).commands["readiness"]
    declared = {}
    for param in readiness.commands["assess"].params:
        if param.param_type_name == "option" and param.name != "help":
            for opt in param.opts + param.secondary_opts:
                declared[opt] = (param.name, bool(param.multiple))
    assert declared == {opt: (name, repeatable) for opt, (name, repeatable, _) in ASSESS_OPTIONS.items()}
