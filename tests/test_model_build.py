"""The tiny Llama generator (reference-stack/model_build.py) and `forge stack model ...`.

The build itself needs torch/transformers from `.venv-vllm` (`make vllm`), so those tests are marked `vllm`;
manifest checking and the CLI's error paths run anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forge.reference_stack import model_build
from forge.reference_stack.cli import app as stack_app
from forge.reference_stack.vllm_engine import vllm_python

BUILD_TIMEOUT_S = 300


def _write_manifest(directory: Path) -> None:
    manifest = {"files": model_build.hash_tree(directory)}
    (directory / model_build.MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")


def test_verify_names_changed_missing_and_extra_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "tokenizer.json").write_text("{}")
    _write_manifest(tmp_path)
    assert model_build.verify(tmp_path) == []

    (tmp_path / "model.safetensors").write_bytes(b"\x01" * 64)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "stray.bin").write_bytes(b"x")
    assert model_build.verify(tmp_path) == [
        "tokenizer.json: missing", "stray.bin: not in the manifest", "model.safetensors: sha256 differs"]


def test_verify_without_manifest_says_to_build(tmp_path: Path) -> None:
    assert model_build.read_manifest(tmp_path) is None
    assert model_build.verify(tmp_path) == [f"{tmp_path}: no {model_build.MANIFEST_NAME} — build the model first"]


def test_build_refuses_to_replace_a_directory_that_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(model_build.BuildError, match="exists and is not a model build"):
        model_build.build(tmp_path)  # refused before torch is imported, so this runs in any venv
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_build_without_engine_venv_is_one_line_error_exit_2(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FORGE_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    result = CliRunner().invoke(stack_app, ["model", "build", "--out", str(tmp_path / "model")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"forge: error: {tmp_path}/no-venv/bin/python: vLLM engine venv not found — run `make vllm` first"]
    assert not (tmp_path / "model").exists()


def test_verify_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(stack_app, ["model", "verify", "--dir", str(tmp_path)]).exit_code == 2
    (tmp_path / "config.json").write_text("{}")
    _write_manifest(tmp_path)
    assert runner.invoke(stack_app, ["model", "verify", "--dir", str(tmp_path)]).exit_code == 0
    (tmp_path / "config.json").write_text('{"changed": true}')
    result = runner.invoke(stack_app, ["model", "verify", "--dir", str(tmp_path)])
    assert result.exit_code == 1 and "config.json: sha256 differs" in result.output


@pytest.mark.vllm
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"{python} missing — run `make vllm` first")
    first, second = tmp_path / "first", tmp_path / "second"
    # One build through the CLI, one through the script: both paths, and the result must not depend on which.
    result = CliRunner().invoke(stack_app, ["model", "build", "--out", str(first)])
    assert result.exit_code == 0, result.output
    assert model_build.run_build(python, second, BUILD_TIMEOUT_S) == 0

    manifest_first, manifest_second = model_build.read_manifest(first), model_build.read_manifest(second)
    assert manifest_first["files"] == manifest_second["files"]
    assert manifest_first["inputs"] == manifest_second["inputs"]
    assert sorted(manifest_first["files"]) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    assert model_build.verify(first) == [] and model_build.verify(second) == []

    config = json.loads((first / "config.json").read_text())
    assert {k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "head_dim", "dtype")} == {
        "vocab_size": 2048, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "dtype": "bfloat16"}
    tokenizer = json.loads((first / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE"
    assert len(tokenizer["model"]["vocab"]) == 2048
    assert {t["content"] for t in tokenizer["added_tokens"]} >= set(model_build.SPECIAL_TOKENS)
    assert "<|assistant|>" in (first / "chat_template.jinja").read_text()
