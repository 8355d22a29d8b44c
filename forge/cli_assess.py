"""`forge readiness assess`, free of the CLI framework: the command itself, and a strict reader of its command line.

`forge readiness assess FILE --format json` is the command CI runs on every change, so its start-up matters
(README, "Measured performance"): importing typer and building its parameter converters costs about as much as
grading the file. `forge.cli.main` therefore hands a command line that `parse_assess_args` fully understands straight
to `assess`; anything else — help, an unknown or repeated option, a bad value, an unreadable path, shell
completion — goes to the typer app (forge.cli_app), which prints its usual messages. Both end in `assess`, with the
same values, so the output and the exit code are the same either way (tests/test_cli.py compares them).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from enum import Enum
from pathlib import Path

from forge.console import error as _err
from forge.console import write_atomic
from forge.errors import InputError

EXIT_READY, EXIT_NOT_READY, EXIT_BAD_INPUT = 0, 1, 2


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


def assess(files: list[Path], format: Format = Format.table, output: Path | None = None,
           fail_on: FailOn = FailOn.fail, as_of: str | None = None, load_results: list[Path] | None = None,
           chaos_journals: list[Path] | None = None, prometheus: str | None = None, base_dir: Path | None = None,
           baseline: Path | None = None) -> int:
    """Grade deploy.yaml file(s) and write the report; returns the exit code (0 ready, 1 not ready, 2 bad input
    among the files). A bad command line raises InputError."""
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
        return EXIT_BAD_INPUT
    not_ready = any(a.verdict == "not_ready" for a in assessments)
    if fail_on is FailOn.warn:
        not_ready = not_ready or any(a.open_findings for a in assessments)
    return EXIT_NOT_READY if not_ready else EXIT_READY


# ---------------------------------------------------------------- the command line, without typer
# Every option of `forge readiness assess` (forge.cli_app.assess_cmd declares them, with their help): its parameter
# name, whether it may be repeated, and whether its value is a path. A test keeps this table equal to the typer
# command's parameters.
ASSESS_OPTIONS: dict[str, tuple[str, bool, bool]] = {
    "--format": ("format", False, False), "-f": ("format", False, False),
    "--output": ("output", False, True), "-o": ("output", False, True),
    "--fail-on": ("fail_on", False, False),
    "--as-of": ("as_of", False, False),
    "--load-results": ("load_results", True, True),
    "--chaos-journal": ("chaos_journals", True, True),
    "--prometheus": ("prometheus", False, False),
    "--base-dir": ("base_dir", False, True),
    "--baseline": ("baseline", False, True),
}
_CHOICES = {"format": Format, "fail_on": FailOn}


def _unreadable(value: str) -> bool:
    """typer refuses an existing path it may not read (its `readable` check): leave that message to typer."""
    try:
        os.stat(value)
    except (OSError, ValueError):
        return False
    return not os.access(value, os.R_OK)


def parse_assess_args(argv: list[str]) -> dict | None:
    """The keyword arguments of `assess` for `readiness assess …` when every token is plainly valid: positional
    files, and the options above as `--name value`, `--name=value` or `-f value`, each single-valued one at most
    once. None for anything else, which typer then parses — and explains, when it is wrong."""
    if len(argv) < 3 or argv[0] != "readiness" or argv[1] != "assess":
        return None
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None  # a shell-completion request: typer answers it
    files: list[Path] = []
    values: dict = {}
    paths: list[str] = []
    tokens = argv[2:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("-"):
            if not token:
                return None
            files.append(Path(token))
            paths.append(token)
            continue
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        spec = ASSESS_OPTIONS.get(name)
        if spec is None:
            return None  # help, `--`, `-`, an unknown or abbreviated option, `-fjson`: typer's to parse
        if not eq:
            if i >= len(tokens):
                return None
            value = tokens[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        key, repeatable, is_path = spec
        if key in _CHOICES:
            if value not in _CHOICES[key]._value2member_map_:
                return None
            parsed = _CHOICES[key](value)
        else:
            parsed = Path(value) if is_path else value
        if is_path:
            paths.append(value)
        if repeatable:
            values.setdefault(key, []).append(parsed)
        elif key in values:
            return None
        else:
            values[key] = parsed
    if not files or any(_unreadable(p) for p in paths):
        return None
    return {"files": files, **values}
