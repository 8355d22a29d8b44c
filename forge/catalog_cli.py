"""`forge catalog`: browse the signal catalog (mounted by forge.cli as a sub-command)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forge.catalog import DerivedSignal, Signal, get_catalog
from forge.errors import InputError

app = typer.Typer(help="The signal catalog: canonical signals, engine sources, OpenTelemetry names.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _signal_record(sig: Signal | DerivedSignal) -> dict:
    cat = get_catalog()
    if isinstance(sig, DerivedSignal):
        return {"name": sig.name, "kind": "derived", "unit": sig.unit, "help": sig.help,
                "expr": sig.expr(), "aliases": cat.aliases_for(sig.name)}
    return {
        "name": sig.name, "kind": sig.scope, "type": sig.type, "unit": sig.unit, "help": sig.help,
        "labels": list(sig.labels), "aliases": cat.aliases_for(sig.name), "otel": sig.otel_name,
        "sources": {dialect: [{"source": m.describe(), "cite": m.cite, "approximate": m.approximate,
                               **({"note": m.note} if m.note else {})} for m in mappings]
                    for dialect, mappings in sig.sources.items()},
        "unavailable": dict(sig.unavailable),
    }


@app.command("list")
def list_signals(fmt: Annotated[ListFormat, typer.Option("--format", "-f", help="table or json")] = ListFormat.table):
    """List every canonical and derived signal with its deploy.yaml aliases."""
    cat = get_catalog()
    records = [_signal_record(s) for s in [*cat.signals.values(), *cat.derived.values()]]
    if fmt is ListFormat.json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    table = Table(title="Forge signal catalog", show_lines=False)
    table.add_column("Signal", no_wrap=True)  # names are copied into PromQL: never break them
    for column in ("Kind", "Type", "Unit", "Aliases", "Engines"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r["name"], r["kind"], r.get("type", "derived"), r["unit"], ", ".join(r["aliases"]),
                      ", ".join(r.get("sources", {})))
    Console().print(table)


@app.command("show")
def show(signal: Annotated[str, typer.Argument(help="canonical name or deploy.yaml alias, e.g. ttft")]):
    """Show one signal: meaning, OpenTelemetry name, and each engine's source metric."""
    try:
        record = _signal_record(get_catalog().get(signal))
    except InputError as exc:
        sys.stderr.write(f"forge: error: {exc.messages[0]}\n")
        raise typer.Exit(2)
    console = Console()
    console.print(f"[bold]{record['name']}[/bold]  ({record['kind']}, {record.get('type', 'PromQL')}, {record['unit']})")
    console.print(record["help"])
    if record.get("aliases"):
        console.print(f"aliases: {', '.join(record['aliases'])}")
    if record.get("otel"):
        console.print(f"OpenTelemetry: {record['otel']}")
    if record.get("labels"):
        console.print(f"labels: {', '.join(record['labels'])}")
    if "expr" in record:
        console.print(f"expr: {record['expr']}", soft_wrap=True)
    for dialect, mappings in record.get("sources", {}).items():
        for m in mappings:
            note = f" — {m['note']}" if m.get("note") else ""
            console.print(f"  {dialect}: {m['source']} [{m['cite']}]{note}", soft_wrap=True, markup=False)
    for dialect, why in record.get("unavailable", {}).items():
        console.print(f"  {dialect}: not available — {why}", soft_wrap=True, markup=False)
