"""The `forge` command line as a typer app: every command, its options and their help.

`forge.cli.main` is the entry point; it mounts a subsystem's sub-app (SUBAPPS) only when the command line names it,
and runs a plain `forge readiness assess …` without this module at all (forge.cli_assess).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge import __version__
from forge.cli_assess import EXIT_BAD_INPUT, FailOn, Format, _write_output, assess
from forge.console import error as _err
from forge.console import one_line_input_errors
from forge.errors import InputError

app = typer.Typer(
    name="forge",
    help="Forge: production readiness and observability for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
readiness_app = typer.Typer(help="Grade a deployment on the 8-dimension Forge readiness framework.",
                            no_args_is_help=True)
app.add_typer(readiness_app, name="readiness")


@readiness_app.command("assess")
@one_line_input_errors
def assess_cmd(
    files: Annotated[list[Path], typer.Argument(help="deploy.yaml file(s), or a directory of them (a fleet).")],
    format: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report here, not stdout.")] = None,
    fail_on: Annotated[FailOn, typer.Option("--fail-on", help="Exit 1 on a not_ready verdict (fail) or on any "
                                            "open warning too (warn).")] = FailOn.fail,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Assess as of this date (YYYY-MM-DD): waiver "
                                                 "expiry and recency checks.")] = None,
    load_results: Annotated[Optional[list[Path]], typer.Option("--load-results", help="Load test results (forge "
                                                               "load, vllm bench serve, GuideLLM, AIPerf) to add "
                                                               "to evidence.load_results; repeatable.")] = None,
    chaos_journals: Annotated[Optional[list[Path]], typer.Option("--chaos-journal", help="Game-day journal (forge "
                                                                 "chaos run --journal) to add to "
                                                                 "evidence.chaos_journals; repeatable.")] = None,
    prometheus: Annotated[Optional[str], typer.Option("--prometheus", help="Prometheus base URL that scrapes the "
                                                      "deployment: live evidence (targets, rules, SLOs, GPU "
                                                      "health); sets evidence.prometheus_url.")] = None,
    base_dir: Annotated[Optional[Path], typer.Option("--base-dir", help="Repository root that SARIF file paths are "
                                                     "relative to (default: $GITHUB_WORKSPACE or the current "
                                                     "directory).")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="A previous JSON report (--format json) to "
                                                     "compare with: what got better or worse.")] = None,
) -> None:
    """Grade deploy.yaml file(s); exit 0 ready, 1 not ready, 2 bad input."""
    # The command itself lives in forge.cli_assess, so that `forge.cli.main` can run it without typer.
    raise typer.Exit(assess(files, format, output, fail_on, as_of, load_results, chaos_journals, prometheus,
                            base_dir, baseline))


@readiness_app.command("checks")
def checks_cmd(
    format: Annotated[str, typer.Option("--format", "-f", help="table or json")] = "table",
    dimension: Annotated[Optional[str], typer.Option("--dimension", "-d", help="Only this dimension.")] = None,
) -> None:
    """List every readiness check."""
    from forge.readiness.registry import all_checks
    from forge.readiness.result import DIMENSIONS

    if format not in ("table", "json"):
        _err(f"--format {format!r}: use table or json")
        raise typer.Exit(EXIT_BAD_INPUT)
    if dimension is not None and dimension not in DIMENSIONS:
        _err(f"--dimension {dimension!r}: unknown — use one of {', '.join(DIMENSIONS)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    checks = [c for c in all_checks().values() if dimension in (None, c.dimension)]
    if format == "json":
        sys.stdout.write(json.dumps([c.to_dict() for c in checks], indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Forge readiness checks ({len(checks)})", show_lines=False)
    for col in ("id", "dimension", "severity", "title"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.id, c.dimension, c.severity, c.title)
    Console().print(table)


@readiness_app.command("explain")
def explain_cmd(check_id: Annotated[str, typer.Argument(help="Check id, e.g. REL-004.")]) -> None:
    """Show one check: why it matters and how to fix it."""
    import difflib

    from forge.readiness.registry import all_checks

    checks = all_checks()
    c = checks.get(check_id.upper())
    if c is None:
        close = difflib.get_close_matches(check_id.upper(), list(checks), n=3, cutoff=0.5)
        hint = f" — did you mean {', '.join(close)}?" if close else " — see `forge readiness checks`"
        _err(f"unknown check {check_id!r}{hint}")
        raise typer.Exit(EXIT_BAD_INPUT)
    from rich.console import Console
    from rich.panel import Panel

    body = (f"[bold]{c.title}[/bold]\n\n[dim]dimension[/dim] {c.dimension}   [dim]severity[/dim] {c.severity}   "
            f"[dim]deploy.yaml[/dim] {c.path or '(whole file)'}\n\n[bold]Why[/bold]\n{c.rationale}\n\n"
            f"[bold]Fix[/bold]\n{c.remediation}")
    Console().print(Panel(body, title=c.id, expand=False))


@readiness_app.command("schema")
def schema_cmd(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of deploy.yaml (committed at readiness/deploy.schema.json)."""
    from forge.schema import json_schema

    try:
        _write_output(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n", output)
    except InputError as exc:
        _err(exc.messages[0])
        raise typer.Exit(EXIT_BAD_INPUT)
    except OSError as exc:
        _err(f"--output {output}: {exc.strerror} — choose a writable path")
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("version")
def version_cmd() -> None:
    """Print Forge's version."""
    sys.stdout.write(f"forge {__version__}\n")


# Subsystems that bring their own CLI. Mounted only when the command line names them (or asks for the overview),
# so `forge readiness assess` doesn't pay for importing them at start-up.
SUBAPPS = {
    "catalog": "forge.catalog_cli",
    "capacity": "forge.readiness.capacity_cli",
    "stack": "forge.reference_stack.cli",
    "alerts": "forge.alerts.cli",
    "exporter": "forge.exporters.cli",
    "load": "forge.load.cli",
    "dashboards": "forge.dashboards.cli",
    "chaos": "forge.chaos.cli",
}


def _mount_subapps(argv: list[str]) -> None:
    import importlib

    first = next((a for a in argv if not a.startswith("-")), None)
    for name, module in SUBAPPS.items():
        if first is None or first == name or first not in (*SUBAPPS, "readiness", "version"):
            app.add_typer(importlib.import_module(module).app, name=name)


def _usage_error(exc: Exception) -> str:
    """Click's usage errors (bad option value, unknown option, missing argument) as one line with the fix."""
    message = " ".join(exc.format_message().replace("Value error, ", "").split())
    ctx = getattr(exc, "ctx", None)
    return f"{message} — see `{ctx.command_path} --help`" if ctx is not None else message
