"""Bad input to `forge readiness assess`, as a user meets it (issue 3 §6).

Every case runs the real CLI in a subprocess and holds it to the contract in DEVELOPERS.md: exit code 2, one line
per problem on stderr (`forge: error: FILE:LINE:COL: key.path: problem — fix`), never a traceback, never pydantic's
jargon, and never a lost report. The good base is `reference-stack/deploy.yaml`, loaded, mutated and dumped.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "reference-stack" / "deploy.yaml").read_text(encoding="utf-8"))
AS_OF = "2026-11-23"
# What a user must never see: a traceback, or pydantic's internals leaking through the messages.
JARGON = ("Traceback", "pydantic", "errors.pydantic.dev", "For further information", "Input should", "[type=",
          "instance of", "Value error", "model_type", "validation error for")


def _limit_memory() -> None:
    # A regression in the YAML-bomb defence must fail the test, not take the machine's memory with it.
    resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))


def forge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, preexec_fn=_limit_memory, env={**os.environ, "COLUMNS": "200"})


def assess(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return forge("readiness", "assess", *args, "--as-of", AS_OF, timeout=timeout)


def error_lines(r: subprocess.CompletedProcess, where: str | Path | None, *needles: str) -> list[str]:
    """Assert the bad-input contract and return stderr's lines; each needle must appear in some line."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    for word in JARGON:
        assert word not in r.stderr, f"{word!r} leaked to the user:\n{r.stderr}"
    lines = r.stderr.splitlines()
    assert lines, "no error message at all"
    for line in lines:
        assert line.startswith("forge: error: "), f"not a one-line forge error: {line!r}\n{r.stderr}"
        if where is not None:
            assert str(where) in line, f"{line!r} does not name {where}"
        assert " — " in line, f"{line!r} gives no fix (expected 'problem — fix')"
    for needle in needles:
        assert any(needle in line for line in lines), f"{needle!r} not in:\n{r.stderr}"
    return lines


def write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def mutated(tmp_path: Path, change: Callable[[dict], None], name: str = "deploy.yaml") -> Path:
    data = copy.deepcopy(BASE)
    change(data)
    return write(tmp_path / name, data)


def line_of(path: Path, text: str, after: str | None = None) -> int:
    """1-based number of the first line containing `text` (after the first line containing `after`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, l in enumerate(lines) if after in l) if after else 0
    return next(i for i, l in enumerate(lines) if i >= start and text in l) + 1


def text_variant(tmp_path: Path, old: str, new: str, name: str = "deploy.yaml") -> Path:
    """The dumped good file with one textual edit: for syntax errors a dict cannot express."""
    good = write(tmp_path / "good.yaml", BASE).read_text(encoding="utf-8")
    assert good.count(old) == 1, old
    path = tmp_path / name
    path.write_text(good.replace(old, new), encoding="utf-8")
    return path


def at(path: Path, line: int) -> str:
    return f"{path}:{line}:"


# ------------------------------------------------------------------ the base itself is good
def test_the_base_file_is_valid(tmp_path):
    r = assess(str(write(tmp_path / "deploy.yaml", BASE)), "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    assert json.loads(r.stdout)["deployment"] == BASE["metadata"]["name"]


# ------------------------------------------------------------------ malformed YAML
def test_bad_indentation(tmp_path):
    p = text_variant(tmp_path, "\n  team: forge\n", "\n   team: forge\n")
    error_lines(assess(str(p)), p, at(p, line_of(p, "team: forge")), "malformed YAML", "indentation")


def test_unclosed_bracket_points_at_the_opening(tmp_path):
    p = text_variant(tmp_path, "\n  labels:\n    stack: reference\n", "\n  labels: {stack: reference\n")
    error_lines(assess(str(p)), p, at(p, line_of(p, "labels: {")), "'{' opened here is not closed", "'}'")


def test_unclosed_quote(tmp_path):
    p = text_variant(tmp_path, "name: forge-reference\n", "name: \"forge-reference\n")
    error_lines(assess(str(p)), p, "malformed YAML", f"{p}:")


def test_tab_indentation(tmp_path):
    p = text_variant(tmp_path, "\n  team: forge\n", "\n\tteam: forge\n")
    error_lines(assess(str(p)), p, at(p, line_of(p, "\tteam")), "tab", "indent with spaces")


def test_duplicate_key_names_the_second_one(tmp_path):
    p = text_variant(tmp_path, "\n  team: forge\n", "\n  team: forge\n  team: platform\n")
    error_lines(assess(str(p)), p, at(p, line_of(p, "team: platform")), "duplicate key 'team'", "keep only one")


def test_a_second_yaml_document(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump(BASE, sort_keys=False) + "---\n" + yaml.safe_dump(BASE, sort_keys=False))
    error_lines(assess(str(p)), p, "second document", "one deployment per file")


def test_python_tags_are_refused_not_executed(tmp_path):
    p = text_variant(tmp_path, "team: forge\n", "team: !!python/object/apply:os.system ['touch pwned']\n")
    error_lines(assess(str(p)), p, at(p, line_of(p, "team: !!python")), "unsupported tag", "remove it")
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ wrong types
def test_string_for_integer(tmp_path):
    p = mutated(tmp_path, lambda d: d["engine"]["args"].update(max_num_seqs="lots"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "max_num_seqs")), "engine.args.max_num_seqs",
                "expected a whole number, got 'lots'")


def test_fraction_for_integer(tmp_path):
    p = mutated(tmp_path, lambda d: d["engine"]["args"].update(max_num_seqs=2.5))
    error_lines(assess(str(p)), p, at(p, line_of(p, "max_num_seqs")), "engine.args.max_num_seqs", "2.5")


def test_list_for_mapping(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(hardware=["CPU"]))
    error_lines(assess(str(p)), p, at(p, line_of(p, "hardware:")), "hardware: expected a mapping, got a list")


def test_bool_for_number_is_not_silently_1(tmp_path):
    p = mutated(tmp_path, lambda d: d["slo"].update(ttft_p95_seconds=True))
    error_lines(assess(str(p)), p, at(p, line_of(p, "ttft_p95_seconds")), "slo.ttft_p95_seconds",
                "expected a number, got true")


def test_yaml_yes_for_integer(tmp_path):
    p = text_variant(tmp_path, "gpus_per_replica: 1", "gpus_per_replica: yes")
    error_lines(assess(str(p)), p, at(p, line_of(p, "gpus_per_replica")), "hardware.gpus_per_replica", "true")


def test_text_for_list(tmp_path):
    p = mutated(tmp_path, lambda d: d["traffic"].update(growth="fast"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "growth")), "traffic.growth", "expected a list, got 'fast'")


def test_either_or_field_gives_one_merged_line(tmp_path):
    p = mutated(tmp_path, lambda d: d["reliability"]["liveness"].update(progress_watchdog="yes please"))
    lines = error_lines(assess(str(p)), p, at(p, line_of(p, "progress_watchdog")),
                        "reliability.liveness.progress_watchdog", "a mapping or true or false")
    assert len(lines) == 1, lines


# ------------------------------------------------------------------ unknown keys
def test_unknown_top_level_key_suggests_the_close_name(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(obervability=d.pop("observability")))
    error_lines(assess(str(p)), p, at(p, line_of(p, "obervability:")), "unknown key 'obervability'",
                "did you mean 'observability'?")


def test_unknown_nested_key_suggests_the_close_name(tmp_path):
    p = mutated(tmp_path, lambda d: d["slo"].update(availabilty=d["slo"].pop("availability")))
    error_lines(assess(str(p)), p, at(p, line_of(p, "availabilty")), "slo.availabilty",
                "did you mean 'availability'?")


@pytest.mark.parametrize("typo, meant", [("gpu_memory_utilisation", "gpu_memory_utilization"),
                                         ("tensor_paralel_size", "tensor_parallel_size")])
def test_engine_arg_typo(tmp_path, typo, meant):
    p = mutated(tmp_path, lambda d: d["engine"]["args"].update({typo: 2}))
    error_lines(assess(str(p)), p, at(p, line_of(p, typo)), f"engine.args.{typo}", f"did you mean '{meant}'?")


def test_engine_arg_in_kebab_case(tmp_path):
    p = mutated(tmp_path, lambda d: d["engine"]["args"].update({"max-num-batched-tokens": 8192}))
    error_lines(assess(str(p)), p, at(p, line_of(p, "max-num-batched-tokens")),
                "engine.args.max-num-batched-tokens", "'max_num_batched_tokens'")


def test_several_engine_arg_typos_each_get_a_line(tmp_path):
    p = mutated(tmp_path, lambda d: d["engine"]["args"].update(
        {"gpu_memory_utilisation": 0.9, "tensor_paralel_size": 1, "some-new-flag": True}))
    lines = error_lines(assess(str(p)), p, at(p, line_of(p, "gpu_memory_utilisation")),
                        at(p, line_of(p, "tensor_paralel_size")), at(p, line_of(p, "some-new-flag")))
    assert len(lines) == 3, lines


# ------------------------------------------------------------------ negative and absurd values
@pytest.mark.parametrize("section, key, value, says", [
    ("hardware", "gpus_per_replica", -1, "-1 is out of range — must be greater than 0"),
    ("engine.args", "gpu_memory_utilization", 1.5, "1.5 is out of range — must be at most 1, e.g. 0.90"),
    ("slo", "availability", 1.2, "1.2 is out of range — must be less than 1, e.g. 0.999"),
    ("slo", "window_days", 0, "0 is out of range — must be greater than 0"),
    ("traffic.requests_per_second", "p50", -3, "-3 is out of range — must be at least 0"),
])
def test_out_of_range_value(tmp_path, section, key, value, says):
    def change(d):
        node = d
        for part in section.split("."):
            node = node[part]
        node[key] = value
    p = mutated(tmp_path, change)
    error_lines(assess(str(p)), p, at(p, line_of(p, f"{key}:", after=section.split(".")[-1] + ":")),
                f"{section}.{key}: {says}")


def test_replicas_max_below_min(tmp_path):
    p = mutated(tmp_path, lambda d: d["hardware"].update(replicas={"min": 4, "max": 2}))
    error_lines(assess(str(p)), p, at(p, line_of(p, "max: 2", after="replicas")), "hardware.replicas.max",
                "max (2) is below min (4)", "raise max or lower min")


def test_p95_above_peak_requests_per_second(tmp_path):
    p = mutated(tmp_path, lambda d: d["traffic"].update(requests_per_second={"p50": 2, "p95": 50, "peak": 8}))
    error_lines(assess(str(p)), p, at(p, line_of(p, "p95: 50")), "traffic.requests_per_second.p95",
                "p95 (50) is above peak (8)", "raise peak or lower p95")


def test_p50_above_p95_tokens(tmp_path):
    p = mutated(tmp_path, lambda d: d["traffic"].update(prompt_tokens={"p50": 600, "p95": 256, "max": 1024}))
    error_lines(assess(str(p)), p, at(p, line_of(p, "p50: 600")), "traffic.prompt_tokens.p50",
                "p50 (600) is above p95 (256)")


def test_tensor_parallel_larger_than_the_gpus_of_a_replica(tmp_path):
    def change(d):
        d["hardware"].update(gpu="H100-SXM-80GB", gpus_per_replica=2)
        d["engine"]["args"]["tensor_parallel_size"] = 4
    p = mutated(tmp_path, change)
    error_lines(assess(str(p)), p, at(p, line_of(p, "tensor_parallel_size")), "engine.args.tensor_parallel_size",
                "needs hardware.gpus_per_replica >= 4 (got 2)", "set gpus_per_replica: 4")


# ------------------------------------------------------------------ unknown names and identity
def test_unknown_gpu_suggests_the_catalog_id(tmp_path):
    p = mutated(tmp_path, lambda d: d["hardware"].update(gpu="H100-SXM"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "gpu: H100-SXM")), "hardware.gpu",
                "unknown GPU 'H100-SXM'", "did you mean 'H100-SXM-80GB'?")


def test_unknown_engine(tmp_path):
    p = mutated(tmp_path, lambda d: d["engine"].update(name="vlm"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "name: vlm")), "engine.name: 'vlm' is not allowed",
                "'vllm', 'trtllm', 'sglang', 'tgi'")


def test_wrong_api_version(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(apiVersion="forge/v2"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "apiVersion")), "'forge/v2' is not supported",
                "use 'forge/v1'")


def test_wrong_kind(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(kind="Deployment"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "kind:")), "kind: 'Deployment' is not allowed",
                "use 'InferenceDeployment'")


def test_missing_required_section(tmp_path):
    p = mutated(tmp_path, lambda d: d.pop("hardware"))
    error_lines(assess(str(p)), p, "hardware: required key 'hardware' is missing", "add it at the top level")


def test_bad_metadata_name(tmp_path):
    p = mutated(tmp_path, lambda d: d["metadata"].update(name="Forge Reference"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "name: Forge")), "metadata.name", "lowercase",
                "did you mean 'forge-reference'?")


# ------------------------------------------------------------------ weights and waivers
def test_bad_sha256(tmp_path):
    p = mutated(tmp_path, lambda d: d["model"]["weights"].update(sha256="abc123"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "sha256")), "model.weights.sha256", "64 hexadecimal")


def test_fp8_dtype_without_quantization(tmp_path):
    p = mutated(tmp_path, lambda d: d["model"]["weights"].update(dtype="fp8", quantization="none"))
    error_lines(assess(str(p)), p, at(p, line_of(p, "quantization: none")), "model.weights.quantization",
                "dtype fp8 is a quantized format", "set quantization (fp8)")


def test_waiver_expiry_not_a_date(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(waivers=[{"check": "REL-004", "reason": "known gap",
                                                       "expires": "next month"}]))
    error_lines(assess(str(p)), p, at(p, line_of(p, "expires")), "waivers.0.expires",
                "expected a date, got 'next month'", "YYYY-MM-DD")


def test_waiver_bad_check_id(tmp_path):
    p = mutated(tmp_path, lambda d: d.update(waivers=[{"check": "rel-004", "reason": "known gap",
                                                       "expires": "2027-01-01"}]))
    error_lines(assess(str(p)), p, at(p, line_of(p, "check: rel-004")), "waivers.0.check",
                "'rel-004' is not a check id", "did you mean 'REL-004'?")


# ------------------------------------------------------------------ files that are not deploy files
def test_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    error_lines(assess(str(p)), p, "no such file", "check the path")


def test_directory_without_deploy_files(tmp_path):
    (tmp_path / "notes.yaml").write_text("just: notes\n")
    error_lines(assess(str(tmp_path)), tmp_path, "no deploy.yaml", "pass a deploy.yaml file")


def test_a_device_is_not_read_forever():
    error_lines(assess("/dev/zero", timeout=30), "/dev/zero", "not a regular file")


def test_empty_file(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text("")
    error_lines(assess(str(p)), p, "file is empty", "readiness/examples/")


def test_whitespace_only_file(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text("  \n\n\t\n   \n")
    error_lines(assess(str(p)), p, "only whitespace", "readiness/examples/")


@pytest.mark.parametrize("content, got", [("- a\n- b\n", "got a list"), ("just a sentence\n", "got 'just a sentence'"),
                                          ("42\n", "got 42")])
def test_a_document_that_is_not_a_mapping(tmp_path, content, got):
    p = tmp_path / "deploy.yaml"
    p.write_text(content)
    error_lines(assess(str(p)), p, f"{p}:1:1:", got, "readiness/examples/")


def test_a_50_mb_file_is_refused_by_size_without_parsing(tmp_path):
    p = tmp_path / "huge.yaml"
    with p.open("w") as f:
        f.write(yaml.safe_dump(BASE, sort_keys=False))
        line = "# " + "x" * 1022 + "\n"
        for _ in range(50 * 1024):
            f.write(line)
    assert p.stat().st_size > 50 * 1024 * 1024
    started = time.monotonic()
    r = assess(str(p))
    elapsed = time.monotonic() - started
    error_lines(r, p, "MB, over the 1 MB limit")
    # Parsing 50 MB of YAML takes tens of seconds; a size check answers as fast as any other error.
    assert elapsed < 15, elapsed


def test_binary_junk(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8)
    error_lines(assess(str(p)), p, "binary data", "expected a YAML text file")


def test_non_utf8_bytes_named_by_line_and_column(tmp_path):
    p = tmp_path / "deploy.yaml"
    good = yaml.safe_dump(BASE, sort_keys=False).encode()
    p.write_bytes(good.replace(b"team: forge", b"team: forg\xe9"))
    error_lines(assess(str(p)), p, at(p, line_of_bytes(p, b"team:")), "0xe9 is not UTF-8", "save the file as UTF-8")


def line_of_bytes(path: Path, text: bytes) -> int:
    return next(i for i, l in enumerate(path.read_bytes().splitlines()) if text in l) + 1


def test_yaml_bomb_is_refused_fast_and_small(tmp_path):
    # "Billion laughs": ten levels of nine aliases each would expand to 9**10 strings.
    rows = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)]
    p = tmp_path / "deploy.yaml"
    p.write_text("\n".join(rows) + "\n")
    started = time.monotonic()
    r = assess(str(p), timeout=60)
    error_lines(r, p, "expands to more than", "write the values out")
    assert time.monotonic() - started < 15


def test_self_referencing_anchor(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text("apiVersion: forge/v1\nmetadata: &m\n  name: x\n  labels: *m\n")
    error_lines(assess(str(p)), p, "an anchor that contains itself")


def test_deeply_nested_yaml(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text("apiVersion: forge/v1\nmetadata: " + "[" * 20_000 + "]" * 20_000 + "\n")
    error_lines(assess(str(p)), p, at(p, 2), "nested more than 64 levels deep")


# ------------------------------------------------------------------ command-line flags
def test_bad_format_flag(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    error_lines(assess(str(p), "--format", "pdf"), None, "'--format'", "'pdf'", "'json'", "--help")


def test_bad_fail_on_flag(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    error_lines(assess(str(p), "--fail-on", "never"), None, "'--fail-on'", "'never'", "'warn'")


def test_misspelt_option(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    error_lines(assess(str(p), "--fromat", "json"), None, "--fromat", "--format")


def test_bad_as_of_date(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    r = forge("readiness", "assess", str(p), "--as-of", "2026-13-45")
    error_lines(r, None, "--as-of '2026-13-45'", "YYYY-MM-DD")


def test_output_pointing_at_a_directory(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    out = tmp_path / "reports"
    out.mkdir()
    error_lines(assess(str(p), "--format", "json", "--output", str(out)), out, "is a directory",
                "give a file path")
    assert list(out.iterdir()) == []


def test_output_in_an_unwritable_place(tmp_path):
    p = write(tmp_path / "deploy.yaml", BASE)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be\n")
    out = blocker / "report.json"
    error_lines(assess(str(p), "--format", "json", "--output", str(out)), out, "choose a writable path")
    assert blocker.read_text() == "a file where a directory should be\n"


# ------------------------------------------------------------------ several problems, several files, no lost data
def test_several_problems_in_one_file_one_line_each(tmp_path):
    def change(d):
        d["engine"]["args"]["gpu_memory_utilization"] = 1.5
        d["slo"]["availability"] = 1.2
        d["hardware"]["gpu"] = "H100-SXM"
        d["obervability"] = d.pop("observability")
    p = mutated(tmp_path, change)
    lines = error_lines(assess(str(p)), p, at(p, line_of(p, "gpu_memory_utilization")),
                        at(p, line_of(p, "availability")), at(p, line_of(p, "gpu: H100-SXM")),
                        at(p, line_of(p, "obervability")))
    assert len(lines) == 4, lines


def test_one_good_and_one_bad_file(tmp_path):
    good = write(tmp_path / "good.yaml", BASE)
    bad = mutated(tmp_path, lambda d: d["hardware"].update(gpu="H100-SXM"), name="bad.yaml")
    r = assess(str(good), str(bad), "--format", "json")
    error_lines(r, bad, "unknown GPU 'H100-SXM'")
    report = json.loads(r.stdout)  # the good file is still graded
    report = report if isinstance(report, dict) else report[0]
    assert report["file"] == str(good) and report["verdict"] in ("ready", "not_ready")


def test_existing_output_survives_invalid_input(tmp_path):
    bad = mutated(tmp_path, lambda d: d["slo"].update(availability=1.2))
    out = tmp_path / "report.json"
    out.write_text('{"last": "good report"}\n')
    before = out.stat().st_mtime_ns
    error_lines(assess(str(bad), "--format", "json", "--output", str(out)), bad, "slo.availability")
    assert out.read_text() == '{"last": "good report"}\n' and out.stat().st_mtime_ns == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["deploy.yaml", "report.json"]  # no temp file left over


def test_existing_output_survives_when_one_of_several_files_is_bad(tmp_path):
    good = write(tmp_path / "good.yaml", BASE)
    bad = mutated(tmp_path, lambda d: d["hardware"].update(gpu="H100-SXM"), name="bad.yaml")
    out = tmp_path / "report.json"
    out.write_text('{"last": "good report"}\n')
    r = assess(str(good), str(bad), "--format", "json", "--output", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown GPU 'H100-SXM'" in r.stderr and f"--output {out}: not written" in r.stderr
    assert out.read_text() == '{"last": "good report"}\n'


def test_schema_output_to_an_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([sys.executable, "-m", "forge.cli", "readiness", "schema", "--output",
                        str(blocker / "schema.json")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("forge: error: --output") and "writable" in r.stderr


# ------------------------------------------------------------------ --baseline previous.json
@pytest.mark.parametrize("content, problem", [
    (None, "no such file"),
    ("", "empty file"),
    ("{not json", "not JSON (line 1, column 2"),
    (b"\xff\xfe\x00junk", "not UTF-8 text"),
    ("[]", "an empty list holds no assessment"),
    ('{"verdict": "ready"}', "the report has no 'deployment', 'score', 'dimensions', 'findings'"),
    ('{"version": "2.1.0", "runs": []}', "this is a SARIF log, not a JSON report"),
    ('[{"deployment": "x", "verdict": "ready", "score": "high", "dimensions": [], "findings": []}]',
     "entry 0: 'score' is 'high', not a number"),
])
def test_bad_baseline(tmp_path, content, problem):
    p = write(tmp_path / "deploy.yaml", BASE)
    baseline = tmp_path / "previous.json"
    if isinstance(content, bytes):
        baseline.write_bytes(content)
    elif content is not None:
        baseline.write_text(content)
    out = tmp_path / "report.html"
    out.write_text("last good report\n")
    lines = error_lines(assess(str(p), "--baseline", str(baseline), "--format", "html", "--output", str(out)),
                       f"--baseline {baseline}", problem)
    assert len(lines) == 1 and out.read_text() == "last good report\n"


def test_baseline_of_another_deployment(tmp_path):
    other = mutated(tmp_path, lambda d: d["metadata"].update(name="another-service"), name="other.yaml")
    previous = tmp_path / "previous.json"
    r = assess(str(other), "--format", "json", "--output", str(previous))
    assert r.returncode in (0, 1), r.stderr
    p = write(tmp_path / "deploy.yaml", BASE)
    lines = error_lines(assess(str(p), "--baseline", str(previous)), f"--baseline {previous}",
                        "it is about 'another-service', not 'forge-reference'", "same deployment")
    assert len(lines) == 1
