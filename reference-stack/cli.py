"""`forge stack ...`: the reference stack's commands (mounted by forge/cli.py as `stack`).

Exit codes as everywhere in Forge: 0 success, 1 the operation failed, 2 bad input or usage (a missing engine
venv included: a setup step the user must run).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from forge.console import error as _err

from forge.reference_stack import model_build
from forge.reference_stack.vllm_engine import missing_vllm_message, vllm_python

EXIT_FAILED, EXIT_BAD_INPUT = 1, 2
# A build takes about 10 s on 2 cores (tokenizer training dominates); the bound only catches a hang.
MODEL_BUILD_TIMEOUT_S = 600

app = typer.Typer(help="The reference stack: engines (real vLLM or the simulator) behind HAProxy, Prometheus, Alertmanager.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
model_app = typer.Typer(help="The tiny Llama the real engine serves, generated locally and deterministically.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("build")
def model_build_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the model to (replaced if present).")]
    = model_build.DEFAULT_MODEL_DIR,
) -> None:
    """Generate the tiny Llama (tokenizer + bf16 weights + sha256 manifest) with the engine venv's python."""
    python = vllm_python()
    if not python.exists():
        _err(missing_vllm_message(python))
        raise typer.Exit(EXIT_BAD_INPUT)
    # The build needs torch/transformers/tokenizers, which live only in the engine venv: run the script there.
    try:
        code = model_build.run_build(python, out, MODEL_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _err(f"model build into {out} did not finish within {MODEL_BUILD_TIMEOUT_S} s")
        raise typer.Exit(EXIT_FAILED)
    if code != 0:
        # The script printed its own one-line reason; keep its code (2 = bad input) where it has one.
        raise typer.Exit(code if code in (EXIT_FAILED, EXIT_BAD_INPUT) else EXIT_FAILED)


@model_app.command("verify")
def model_verify_cmd(
    model_dir: Annotated[Path, typer.Option("--dir", help="The model directory to check.")]
    = model_build.DEFAULT_MODEL_DIR,
) -> None:
    """Check a built model's files against its sha256 manifest (exit 1 on any difference)."""
    manifest = model_build.read_manifest(model_dir)
    if manifest is None:
        _err(f"{model_dir}: no {model_build.MANIFEST_NAME} — run `forge stack model build --out {model_dir}`")
        raise typer.Exit(EXIT_BAD_INPUT)
    problems = model_build.verify(model_dir)
    for problem in problems:
        _err(f"{model_dir}: {problem}")
    if problems:
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"{model_dir}: {len(manifest['files'])} files match the manifest")


# The running stack (engines behind HAProxy, Prometheus, Alertmanager, receiver): up, status, down, logs, gateway.
from forge.reference_stack import stack_cli  # noqa: E402  (its own module; merged here so `forge stack` has both)

app.registered_commands += stack_cli.app.registered_commands
app.registered_groups += stack_cli.app.registered_groups
