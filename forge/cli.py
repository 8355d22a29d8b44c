"""The `forge` command line. Exit codes: 0 ready / ok, 1 not ready, 2 bad input or usage."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge import __version__
from forge.console import error as _err
from forge.console import one_line_input_errors
from forge.console import write_atomic
from forge.errors import InputError

EXIT_READY, EXIT_NOT_READY, EXIT_BAD_INPUT = 0, 1, 2

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


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"
    sarif = "sarif"
    junit = "junit"


class FailOn(str, Enum):
    fail = "fail"
    warn = "warn"




def _write_output(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    if output.is_dir():
        raise InputError(f"--output {output}: is a directory — give a file path, e.g. {output}/report.html")
    if not output.parent.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(output, text)


def _declares_deployment(path: Path) -> bool:
    """Reads only the head of the file: a 50 MB YAML in a fleet folder costs nothing. An unreadable file counts,
    so that the loader reports it instead of it vanishing from the fleet."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return "kind: InferenceDeployment" in f.read(20_000)
    except OSError:
        return True


def _expand(files: list[Path]) -> list[Path]:
    """Files stay files; a directory stands for every deploy file (kind: InferenceDeployment) under it (a fleet)."""
    out: list[Path] = []
    for f in files:
        if f.is_dir():
            found = sorted(
                p for p in f.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file() and _declares_deployment(p)
            )
            if not found:
                raise InputError(f"{f}: is a directory with no deploy.yaml (kind: InferenceDeployment) under it — "
                                 "pass a deploy.yaml file")
            out.extend(found)
        else:
            out.append(f)
    return out


def _assess_with_progress(paths: list[Path], day: dt.date | None, evidence: dict[str, tuple]) -> list:
    """Assess every file; a progress bar on stderr when a person is watching a fleet go by."""
    from forge.readiness.assess import assess_many

    if len(paths) < 20 or not sys.stderr.isatty():
        return assess_many(paths, day, evidence=evidence)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("assessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("assess", total=len(paths))
        return assess_many(paths, day, on_done=lambda: progress.advance(task), evidence=evidence)


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
    # Every problem with the command line is found before anything is graded or written (InputError: one line
    # each, exit 2); a bad deploy file of a fleet is reported and the rest still graded.
    try:
        day = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise InputError(f"--as-of {as_of!r}: not a date — use YYYY-MM-DD") from None
    for f in load_results or ():
        if not f.is_file():
            raise InputError(f"--load-results {f}: no such file — give a results file of forge load, vllm bench "
                             "serve, GuideLLM or AIPerf")
    if chaos_journals:  # a journal named here is checked here: a bad one is bad usage, not a finding
        from forge.readiness.evidence_chaos import read_journal

        problems = []
        for f in chaos_journals:
            try:
                read_journal(f)
            except InputError as exc:
                problems.extend(f"--chaos-journal {m}" for m in exc.messages)
        if problems:
            raise InputError(problems)
    previous = None
    if baseline is not None:  # read before grading, so a bad baseline costs nothing and writes nothing
        from forge.readiness.baseline import load_baseline

        previous = load_baseline(baseline)
    paths = _expand(files)
    if prometheus:  # checked once here, not once per file of a fleet
        from forge.readiness.evidence_prometheus import check_reachable

        check_reachable(prometheus, "--prometheus")
    extra = {"load_results": tuple(load_results or ()), "chaos_journals": tuple(chaos_journals or ()),
             "prometheus_url": (prometheus,) if prometheus else ()}
    assessments, bad = [], False
    for result in _assess_with_progress(paths, day, extra):
        if isinstance(result, list):
            bad = True
            for m in result:
                _err(m)
        else:
            assessments.append(result)
    if bad and output is not None and assessments:
        # Never replace the last good report with one that silently lacks the files that failed to load.
        raise InputError(f"--output {output}: not written because of the input errors above — fix them and run "
                         "again")
    if previous is not None and assessments:
        from forge.readiness.baseline import attach

        attach(assessments, previous, baseline)
    if assessments:
        from forge.readiness.reports import print_table, render

        try:
            if format is Format.table and output is None:
                from rich.console import Console

                print_table(assessments, Console())
            else:
                root = base_dir or Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd())
                _write_output(render(assessments, format.value, base_dir=root, fail_on=fail_on.value), output)
        except OSError as exc:
            raise InputError(f"--output {output}: {exc.strerror} — choose a writable path") from None
    if bad:
        raise typer.Exit(EXIT_BAD_INPUT)
    not_ready = any(a.verdict == "not_ready" for a in assessments)
    if fail_on is FailOn.warn:
        not_ready = not_ready or any(a.open_findings for a in assessments)
    raise typer.Exit(EXIT_NOT_READY if not_ready else EXIT_READY)


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


def main() -> None:
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer on the real click
        from click.exceptions import ClickException

    _mount_subapps(sys.argv[1:])
    try:
        # Not standalone: usage errors come back here to be printed as one line, not click's framed box.
        rc = app(standalone_mode=False)
    except InputError as exc:
        for m in exc.messages:
            _err(m)
        sys.exit(EXIT_BAD_INPUT)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `forge` alone: typer has already printed the help
            sys.exit(exc.exit_code)
        _err(_usage_error(exc))
        sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _err("interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
