"""The terminal table (rich) and its Markdown twin for PR comments: same content, same order."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

from forge.readiness.reports._common import (
    BASELINE_SECTIONS,
    GATING_RULE,
    STATUS_LABEL,
    VERDICT_LABEL,
    baseline_headline,
    baseline_origin,
    dimension_name,
    quiet_checks_note,
    failing_dimensions,
    location,
    moved_dimensions,
    open_findings,
    signed,
    status_word,
    waived_findings,
    waiver_text,
)
from forge.readiness.result import GATING_DIMENSIONS, Assessment

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

VERDICT_STYLE = {"ready": "bold white on green", "not_ready": "bold white on red"}
STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "waived": "magenta", "not_applicable": "dim"}
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}


# ---------------------------------------------------------------------------------------------------- rich table
def _renderables(assessments: list[Assessment]) -> list[RenderableType]:
    out: list[RenderableType] = []
    if len(assessments) > 1:
        out += [_summary_table(assessments), ""]
    for i, a in enumerate(assessments):
        if i:
            from rich.rule import Rule

            out.append(Rule(style="dim"))
        out += _details(a)
    return out


def _summary_table(assessments: list[Assessment]) -> RenderableType:
    from rich.table import Table
    from rich.text import Text

    ready = sum(a.verdict == "ready" for a in assessments)
    table = Table(title=f"Forge readiness: {ready} of {len(assessments)} deployments ready", title_justify="left")
    for col, kw in (("file", {"overflow": "fold"}), ("deployment", {"overflow": "fold"}), ("verdict", {}), ("score", {"justify": "right"}),
                    ("failing dimensions", {})):
        table.add_column(col, **kw)
    for a in assessments:
        table.add_row(Text(a.file), Text(a.deployment, style="bold"),
                      Text(VERDICT_LABEL.get(a.verdict, a.verdict), style="green" if a.verdict == "ready" else "red"),
                      str(a.score), Text(", ".join(failing_dimensions(a)) or "-"))
    return table


def _details(a: Assessment) -> list[RenderableType]:
    from rich.table import Table
    from rich.text import Text

    header = Text()
    header.append(a.deployment, style="bold")
    header.append("  ")
    header.append(f" {VERDICT_LABEL.get(a.verdict, a.verdict)} ", style=VERDICT_STYLE.get(a.verdict, "bold"))
    header.append(f"  score {a.score}/100", style="bold")
    header.append(f"  {a.file} · as of {a.as_of} · forge {a.forge_version}", style="dim")
    out: list[RenderableType] = [header]
    for reason in a.verdict_reasons:
        out.append(Text(f"  • {reason}", style="red"))

    dims = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    dims.add_column("dimension")
    dims.add_column("score", justify="right")
    dims.add_column("", no_wrap=True)
    dims.add_column("status")
    dims.add_column("findings", style="dim")
    for d in a.dimensions:
        name = Text(d.name)
        if d.id in GATING_DIMENSIONS:
            name.append(" (gating)", style="dim")
        filled = round(d.score / 10)
        bar = Text("█" * filled, style=STATUS_STYLE.get(d.status, "")) + Text("░" * (10 - filled), style="dim")
        counts = ", ".join(f"{n} {STATUS_LABEL.get(s, s)}" for s, n in d.counts.items()
                           if n and s in ("fail", "warn", "waived"))
        dims.add_row(name, str(d.score), bar, Text(d.status, style=STATUS_STYLE.get(d.status, "")), counts)
    out += ["", dims, ""]
    if a.baseline is not None:
        out += _baseline_rich(a.baseline) + [""]

    findings = open_findings(a)
    if findings:
        table = Table(title=f"Open findings ({len(findings)})", title_justify="left", show_lines=True,
                      header_style="bold", expand=True)
        table.add_column("check", no_wrap=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("finding", ratio=1)
        for f in findings:
            body = Text()
            body.append(f.title, style="bold")
            body.append("\n" + f.message)
            body.append("\nfix: ", style="cyan")
            body.append(f.remediation)
            body.append(f"\n{location(a, f)}", style="dim")
            table.add_row(Text(f.check), Text(f.severity, style=SEVERITY_STYLE.get(f.severity, "")),
                          Text(f.status, style=STATUS_STYLE.get(f.status, "")), body)
        out.append(table)
    else:
        out.append(Text("No open findings.", style="green"))
    waived = waived_findings(a)
    if waived:
        line = Text(f"Waived ({len(waived)}): ", style="magenta")
        for i, f in enumerate(waived):
            if i:
                line.append("; ")
            line.append(f.check, style="bold")
            line.append(f" {waiver_text(f)}")
        out += ["", line]
    out.append("")
    return out


DIRECTION_STYLE = {"better": "green", "worse": "red", "same": ""}


def _baseline_rich(b: dict) -> list[RenderableType]:
    from rich.text import Text

    if not b.get("matched"):
        return [Text(f"Since the baseline: not in {b.get('source', 'the baseline')} (first assessment of this file)",
                     style="dim")]
    delta = b["score"]["delta"]
    head = Text("Since the baseline ", style="bold")
    head.append(f"({baseline_origin(b)}): ", style="dim")
    head.append(baseline_headline(b), style="green" if delta > 0 else "red" if delta < 0 else "")
    out: list[RenderableType] = [head]
    moved = moved_dimensions(b)
    if moved:
        out.append(Text("  dimensions: " + "; ".join(
            f"{d['name']} {d['before'] if d['before'] is not None else '—'} → {d['after']} ({signed(d['delta'])})"
            for d in moved)))
    for key, heading in BASELINE_SECTIONS:
        items = b["findings"][key]
        if not items:
            continue
        line = Text(f"  {heading.lower()} ({len(items)}): ", style="bold")
        for i, c in enumerate(items):
            if i:
                line.append(", ")
            line.append(f"{c['check']} {status_word(c['before'])}→{status_word(c['after'])}",
                        style=DIRECTION_STYLE.get(c["direction"], ""))
        out.append(line)
    if not moved and not any(b["findings"].values()):
        out.append(Text("  no check changed status", style="dim"))
    if quiet_checks_note(b):
        out.append(Text(f"  {quiet_checks_note(b)}", style="dim"))
    return out


def print_table(assessments: list[Assessment], console: Console) -> None:
    for r in _renderables(assessments):
        console.print(r)


def table_text(assessments: list[Assessment], width: int = 120) -> str:
    """The table as plain text (no colour codes), for --output files."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False,
                      legacy_windows=False, soft_wrap=False)
    print_table(assessments, console)
    return console.export_text(styles=False)


# ------------------------------------------------------------------------------------------------------ markdown
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def md(text: object) -> str:
    """Text safe in a GitHub Markdown table cell: HTML is shown, not interpreted; pipes and newlines can't break
    the table; Markdown punctuation is literal."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("\r\n", "\n").replace("\n", "<br>")


def markdown(assessments: list[Assessment]) -> str:
    lines: list[str] = []
    if len(assessments) > 1:
        ready = sum(a.verdict == "ready" for a in assessments)
        lines += [f"## Forge readiness: {ready} of {len(assessments)} deployments ready", "",
                  "| File | Deployment | Verdict | Score | Failing dimensions |",
                  "|---|---|---|---:|---|"]
        for a in assessments:
            icon = "✅" if a.verdict == "ready" else "❌"
            lines.append(f"| {md(a.file)} | {md(a.deployment)} | {icon} {VERDICT_LABEL.get(a.verdict, a.verdict)} "
                         f"| {a.score} | {md(', '.join(failing_dimensions(a))) or '—'} |")
        lines.append("")
    heading = "###" if len(assessments) > 1 else "##"
    for a in assessments:
        lines += _markdown_one(a, heading)
    return "\n".join(lines).rstrip() + "\n"


def _markdown_one(a: Assessment, h: str) -> list[str]:
    icon = "✅" if a.verdict == "ready" else "❌"
    lines = [f"{h} {icon} {md(a.deployment)}: **{VERDICT_LABEL.get(a.verdict, a.verdict)}** (score {a.score}/100)",
             "", f"{md(a.file)} · as of {md(a.as_of)} · Forge {md(a.forge_version)}", ""]
    if a.verdict_reasons:
        lines += ["**Why not ready**", ""] + [f"- {md(r)}" for r in a.verdict_reasons] + [""]
    lines += ["| Dimension | Score | Status | Fail | Warn | Waived |", "|---|---:|---|---:|---:|---:|"]
    for d in a.dimensions:
        gating = " *(gating)*" if d.id in GATING_DIMENSIONS else ""
        mark = {"pass": "🟢", "warn": "🟡", "fail": "🔴"}.get(d.status, "")
        c = d.counts
        lines.append(f"| {md(d.name)}{gating} | {d.score} | {mark} {d.status} | {c.get('fail', 0)} "
                     f"| {c.get('warn', 0)} | {c.get('waived', 0)} |")
    lines += ["", f"<sub>{md(GATING_RULE)}</sub>", ""]
    if a.baseline is not None:
        lines += _markdown_baseline(a.baseline)
    findings = open_findings(a)
    if findings:
        lines += [f"**Open findings ({len(findings)})**", "",
                  "| Check | Severity | Status | Dimension | Finding | Fix | Where |",
                  "|---|---|---|---|---|---|---|"]
        for f in findings:
            lines.append(f"| {md(f.check)} | {md(f.severity)} | {md(f.status)} | {md(dimension_name(f.dimension))} "
                         f"| **{md(f.title)}**<br>{md(f.message)} | {md(f.remediation)} "
                         f"| {md(f'line {f.line}')}{'<br>' + md(f.path) if f.path else ''} |")
        lines.append("")
    else:
        lines += ["No open findings.", ""]
    waived = waived_findings(a)
    if waived:
        lines += [f"<details><summary>Waived ({len(waived)})</summary>", "", "| Check | Title | Waiver |",
                  "|---|---|---|"]
        lines += [f"| {md(f.check)} | {md(f.title)} | {md(waiver_text(f))} |" for f in waived]
        lines += ["", "</details>", ""]
    return lines


DIRECTION_ICON = {"better": "🟢", "worse": "🔴", "same": "⚪"}


def _markdown_baseline(b: dict) -> list[str]:
    if not b.get("matched"):
        return [f"**Since the baseline:** not in {md(b.get('source', 'the baseline'))} (first assessment of this "
                "file)", ""]
    lines = [f"**Since the baseline** ({md(baseline_origin(b))}): {md(baseline_headline(b))}", ""]
    moved = moved_dimensions(b)
    if moved:
        lines += ["| Dimension | Before | After | Change |", "|---|---:|---:|---:|"]
        lines += [f"| {md(d['name'])} | {d['before'] if d['before'] is not None else '—'} | {d['after']} "
                  f"| {md(signed(d['delta']))} |" for d in moved]
        lines.append("")
    rows = [(heading, c) for key, heading in BASELINE_SECTIONS for c in b["findings"][key]]
    if rows:
        lines += ["| Change | Check | Title | Before | After |", "|---|---|---|---|---|"]
        lines += [f"| {DIRECTION_ICON.get(c['direction'], '')} {md(heading.lower())} | {md(c['check'])} "
                  f"| {md(c['title'])} | {md(status_word(c['before']))} | {md(status_word(c['after']))} |"
                  for heading, c in rows]
        lines.append("")
    elif not moved:
        lines += ["No check changed status.", ""]
    if quiet_checks_note(b):
        lines += [f"<sub>{md(quiet_checks_note(b))}</sub>", ""]
    return lines
