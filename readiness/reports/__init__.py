"""Report writers for `forge readiness assess`: table, json, markdown, html, sarif, junit.

Every writer reads only the types in `forge.readiness.result`. Heavy libraries (rich, Jinja2) are imported inside
the writer that needs them, so `forge readiness assess` starts fast whatever the format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from forge.errors import InputError
from forge.readiness.result import Assessment

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("table", "json", "markdown", "html", "sarif", "junit")
FAIL_ON = ("fail", "warn")


def render(
    assessments: list[Assessment] | Assessment,
    fmt: str,
    *,
    base_dir: Path | None = None,
    fail_on: str = "fail",
) -> str:
    """The report for one or more assessments as text.

    base_dir: SARIF file URIs are made relative to it (the repository root, for GitHub code scanning).
    fail_on: JUnit only — "warn" turns open warnings into <failure>s, as `--fail-on warn` does to the exit code.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: unknown format — use one of {', '.join(FORMATS)}")
    if fail_on not in FAIL_ON:
        raise InputError(f"--fail-on {fail_on!r}: unknown — use fail or warn")
    items = _as_list(assessments)
    if fmt == "json":
        data = items[0].to_dict() if len(items) == 1 else [a.to_dict() for a in items]
        from forge.readiness.reports._common import json_document

        return json_document(data)
    if fmt == "table":
        from forge.readiness.reports.text import table_text

        return table_text(items)
    if fmt == "markdown":
        from forge.readiness.reports.text import markdown

        return markdown(items)
    if fmt == "sarif":
        from forge.readiness.reports.sarif import sarif

        return sarif(items, base_dir=base_dir)
    if fmt == "junit":
        from forge.readiness.reports.junit import junit

        return junit(items, fail_on=fail_on)
    from forge.readiness.reports.html import html

    return html(items)


def print_table(assessments: list[Assessment] | Assessment, console: Console) -> None:
    """The terminal report (rich): colours when the console supports them."""
    from forge.readiness.reports.text import print_table as _print

    _print(_as_list(assessments), console)


def _as_list(assessments: Iterable[Assessment] | Assessment) -> list[Assessment]:
    return [assessments] if isinstance(assessments, Assessment) else list(assessments)


__all__ = ["FORMATS", "render", "print_table"]
