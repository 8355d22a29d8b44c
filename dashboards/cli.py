"""`forge dashboards ...`: generate the Grafana dashboards (mounted by forge/cli.py as `dashboards`).

Also runnable without the mount: ``python -m forge.dashboards.cli build``. Exit codes as everywhere in Forge:
0 success, 2 bad input or usage.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge.console import error as _err
from forge.console import write_atomic

from forge.errors import InputError

EXIT_BAD_INPUT = 2
DEFAULT_OUT = Path("dashboards/generated")

app = typer.Typer(help="Grafana dashboards from the signal catalog, the alert recording rules and deploy.yaml.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def generate(deploy: Path | None, out: Path) -> tuple[list[Path], list[str]]:
    """Write every dashboard into `out`; returns the paths and the notes. InputError on bad input."""
    from forge.dashboards.build import DashboardSettings, build_dashboards, render, settings_from_deployment

    if deploy is not None:
        from forge.loader import load

        settings = settings_from_deployment(load(deploy).deployment, deploy.resolve().parent)
    else:
        settings = DashboardSettings()
    boards = build_dashboards(settings)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, board in boards.items():
            target = out / name
            write_atomic(target, render(board))  # never half a dashboard where provisioning reads it
            written.append(target)
    except OSError as exc:
        raise InputError(f"--out {out}: {exc.strerror} — choose a writable directory") from None
    return written, settings.notes


@app.command("build")
def build_cmd(
    deploy: Annotated[Optional[Path], typer.Option("--deploy", "-d", help="deploy.yaml whose SLOs, engine limits "
                                                   "and capacity prediction set the thresholds.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the dashboard JSON files.")] = DEFAULT_OUT,
) -> None:
    """Regenerate the dashboards (fleet, engine, GPU, cost, SLO, capacity) as Grafana JSON."""
    try:
        written, notes = generate(deploy, out)
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        raise typer.Exit(EXIT_BAD_INPUT)
    for note in notes:
        sys.stderr.write(f"forge: note: {note}\n")
    for path in written:
        sys.stdout.write(f"wrote {path}\n")


@app.command("check")
def check_cmd(
    directory: Annotated[Path, typer.Argument(help="Directory of dashboard JSON files.")] = DEFAULT_OUT,
) -> None:
    """Validate dashboard JSON: schema version, datasource variable, unique panel ids, canonical names only."""
    import json

    from forge.dashboards.validate import allowed_metric_names, validate_dashboard

    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        _err(f"{directory}: no *.json dashboards — pass the directory `forge dashboards build` wrote")
        raise typer.Exit(EXIT_BAD_INPUT)
    allowed = allowed_metric_names()
    problems: list[str] = []
    for path in files:
        try:
            board = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: not readable JSON ({exc})")
            continue
        problems += [f"{path.name}: {p}" for p in validate_dashboard(board, allowed)]
    for p in problems:
        _err(p)
    if problems:
        raise typer.Exit(EXIT_BAD_INPUT)
    sys.stdout.write(f"{len(files)} dashboards OK\n")


if __name__ == "__main__":
    app()
