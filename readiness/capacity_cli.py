"""`forge capacity plan deploy.yaml`: the capacity & cost model for one deployment, as a table or JSON."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forge.errors import InputError

EXIT_BAD_INPUT = 2
GiB = 1024**3

app = typer.Typer(help="Capacity & cost model: fit, KV cache, latency, replicas and cost at each growth multiplier.",
                  no_args_is_help=True)


class PlanFormat(str, Enum):
    table = "table"
    json = "json"


def _fmt(value, spec: str, none: str = "—") -> str:
    return none if value is None else format(value, spec)


def _table(plan, console: Console) -> None:
    summary = Table(title=f"Capacity plan — {plan.gpu} × {plan.gpus_per_replica} per replica", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    rows = [
        ("fits", "yes" if plan.fits else "NO"),
        ("why", plan.fit_reason),
        ("weights per GPU", f"{plan.weights_bytes_per_gpu / GiB:.2f} GiB ({plan.weights_dtype})"),
        ("KV bytes per token per GPU", f"{plan.kv_bytes_per_token:,.0f} B ({plan.kv_cache_dtype})"),
        ("KV cache per GPU", f"{plan.kv_cache_bytes_per_gpu / GiB:.2f} GiB"),
        ("KV tokens per replica", f"{plan.kv_tokens_per_replica:,}"),
        ("max concurrent sequences (p95 size)", _fmt(plan.max_concurrent_sequences, ",")),
        ("prefill tokens/s per GPU", _fmt(plan.prefill_tokens_per_second_per_gpu, ",.0f")),
        ("output tokens/s per GPU within SLO", _fmt(plan.decode_tokens_per_second_per_gpu, ",.0f")),
        ("requests/s per replica within SLO", _fmt(plan.max_requests_per_second_per_replica, ".2f")),
        ("TTFT p50", _fmt(plan.ttft_p50_seconds, ".3f") + " s"),
        ("ITL p50", _fmt(plan.itl_p50_seconds and plan.itl_p50_seconds * 1000, ".1f") + " ms"),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    if plan.growth:
        growth = Table(title="Growth (sized on p95 traffic; headroom = burst + N+1)")
        for column in ("×", "req/s", "replicas", "with headroom", "TTFT p95 s", "ITL p95 ms", "util", "$/h",
                       "$/1M out", "$/1M in", "$/request", "idle GPU-h/day"):
            growth.add_column(column, justify="right")
        for p in plan.growth:
            growth.add_row(
                f"{p.multiplier:g}", f"{p.requests_per_second:g}", _fmt(p.replicas_needed, "d"),
                _fmt(p.replicas_with_headroom, "d"), _fmt(p.ttft_p95_seconds, ".3f"),
                _fmt(p.itl_p95_seconds and p.itl_p95_seconds * 1000, ".1f"), _fmt(p.utilization, ".0%"),
                _fmt(p.cost_per_hour, ",.2f"), _fmt(p.cost_per_million_output_tokens, ",.3f"),
                _fmt(p.cost_per_million_input_tokens, ",.3f"), _fmt(p.cost_per_successful_request, ".5f"),
                _fmt(p.idle_gpu_hours_per_day, ",.1f"))
        console.print(growth)
    for note in plan.notes:
        console.print(f"note: {note}")


@app.command("plan")
def plan_cmd(
    deploy_file: Annotated[Path, typer.Argument(help="deploy.yaml to plan")],
    output_format: Annotated[PlanFormat, typer.Option("--format", "-f", help="table or json")] = PlanFormat.table,
) -> None:
    """Does it fit, how many KV tokens, how fast, how many replicas at 1×/3×/10×, at what cost."""
    from forge.loader import load
    from forge.readiness.capacity import estimate

    try:
        loaded = load(deploy_file)
        plan = estimate(loaded.deployment, loaded.path.parent)
    except InputError as exc:
        for message in exc.messages:
            sys.stderr.write(f"error: {message}\n")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if output_format is PlanFormat.json:
        sys.stdout.write(json.dumps(plan.to_dict(), indent=2) + "\n")
    else:
        # Wide enough for the growth table even when piped (rich falls back to 80 columns there).
        _table(plan, Console(width=max(Console().width, 150)))


@app.callback()
def _capacity() -> None:
    """Capacity & cost model."""
