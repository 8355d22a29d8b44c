"""`forge alerts ...`: generate the Prometheus rules (mounted by forge/cli.py as `alerts`).

Also runnable without the mount: ``python -m forge.alerts.cli build``. Exit codes as everywhere in Forge:
0 success, 2 bad input or usage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge.console import error as _err
from forge.console import write_atomic

from forge.alerts.generate import (DEFAULT_RUNBOOK_BASE_URL, VLLM_BUCKET_BOUNDS, Settings, build_rules,
                                   bucket_bounds_from_page, render, settings_from_deployment)
from forge.errors import InputError

EXIT_BAD_INPUT = 2
GENERIC_RULES_FILE = "forge-rules.yaml"

app = typer.Typer(help="Prometheus recording and alerting rules from the signal catalog and deploy.yaml's SLOs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def rules_file_name(deploy: Path | None) -> str:
    """forge-rules.yaml without a deploy file; else named after it: `chat.yaml` -> chat-rules.yaml, and a file
    called deploy.yaml after its folder (`reference-stack/deploy.yaml` -> reference-stack-rules.yaml)."""
    if deploy is None:
        return GENERIC_RULES_FILE
    stem = deploy.stem if deploy.stem != "deploy" else deploy.resolve().parent.name
    return f"{stem}-rules.yaml"


def _command_line(deploy: Path | None, base_url: str, metrics_page: Path | None) -> str:
    """The reproducible command for the file header (relative paths only: no machine's home directory)."""
    parts = ["forge alerts build"]
    if deploy is not None:
        parts.append(f"--deploy {deploy.as_posix()}")
    if metrics_page is not None:
        parts.append(f"--metrics-page {metrics_page.as_posix()}")
    if base_url != DEFAULT_RUNBOOK_BASE_URL:
        parts.append(f"--runbook-base-url {base_url}")
    return " ".join(parts)


def generate_file(deploy: Path | None, out: Path, runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
                  metrics_page: Path | None = None) -> tuple[Path, list[str]]:
    """Write the rule file; returns its path and the notes. InputError on bad input."""
    if not runbook_base_url.endswith("/"):
        runbook_base_url += "/"
    bounds = dict(VLLM_BUCKET_BOUNDS)
    if metrics_page is not None:
        from forge.loader import read_text

        bounds.update(bucket_bounds_from_page(read_text(metrics_page), str(metrics_page)))
    if deploy is not None:
        from forge.loader import load

        settings = settings_from_deployment(load(deploy).deployment, runbook_base_url=runbook_base_url,
                                            bucket_bounds=bounds)
    else:
        settings = Settings(runbook_base_url=runbook_base_url, bucket_bounds=bounds)
    rules = build_rules(settings)
    target = out / rules_file_name(deploy) if out.is_dir() or out.suffix not in (".yaml", ".yml") else out
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Never half a rule file where Prometheus loads it.
        write_atomic(target, render(rules, _command_line(deploy, runbook_base_url, metrics_page)))
    except OSError as exc:
        raise InputError(f"--out {out}: {exc.strerror} — choose a writable directory or .yaml file") from None
    return target, rules.notes


@app.command("build")
def build_cmd(
    deploy: Annotated[Optional[Path], typer.Option("--deploy", "-d", help="deploy.yaml whose slo: the burn alerts "
                                                   "use (default: generic SLOs).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory (file named after the deploy file) or a "
                                      ".yaml path.")] = Path("alerts"),
    runbook_base_url: Annotated[str, typer.Option("--runbook-base-url", help="Each alert's runbook_url is "
                                                  "<this><AlertName>.md.")] = DEFAULT_RUNBOOK_BASE_URL,
    metrics_page: Annotated[Optional[Path], typer.Option("--metrics-page", help="A saved /metrics page of your "
                                                         "engine: the latency SLIs use its bucket bounds.")] = None,
) -> None:
    """Regenerate the rule file (recording rules, engine/GPU alerts, multi-window SLO burn alerts)."""
    try:
        target, notes = generate_file(deploy, out, runbook_base_url, metrics_page)
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        raise typer.Exit(EXIT_BAD_INPUT)
    for note in notes:
        sys.stderr.write(f"forge: note: {note}\n")
    sys.stdout.write(f"wrote {target}\n")


@app.command("list")
def list_cmd(
    deploy: Annotated[Optional[Path], typer.Option("--deploy", "-d", help="deploy.yaml (default: generic SLOs).")]
    = None,
) -> None:
    """List the alerts with their severity and summary."""
    from rich.console import Console
    from rich.table import Table

    from forge.loader import load

    try:
        settings = settings_from_deployment(load(deploy).deployment) if deploy else Settings()
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        raise typer.Exit(EXIT_BAD_INPUT)
    table = Table(title="Forge alerts")
    for column in ("Alert", "Severity", "For", "Summary"):
        table.add_column(column, overflow="fold")
    for alert in build_rules(settings).alerts():
        table.add_row(alert.alert, alert.severity, alert.for_ or "", alert.summary)
    Console().print(table)


if __name__ == "__main__":
    app()
