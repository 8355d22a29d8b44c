"""`forge capacity plan deploy.yaml`: the capacity & cost model for one deployment, as a table or JSON."""

from __future__ import annotations

import json
import sys
from enum import Enum
from html import escape
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
    html = "html"


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


# ---------------------------------------------------------------- HTML (inline SVG, no network)
TEMPLATES = Path(__file__).with_name("templates")
CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 240, 48, 52, 12, 32


def _nice_max(value: float) -> float:
    """An axis top: 1, 2 or 5 × 10^k at or above value."""
    if value <= 0:
        return 1.0
    import math

    exponent = 10 ** math.floor(math.log10(value))
    return next(m * exponent for m in (1, 2, 5, 10) if m * exponent >= value)


def _y(value: float, top: float) -> float:
    return PAD_T + (CHART_H - PAD_T - PAD_B) * (1 - value / top)


def _axes(left_top: float, right_top: float | None, left_fmt: str, right_fmt: str) -> list[str]:
    parts = [f'<line class="axis" x1="{PAD_L}" y1="{CHART_H - PAD_B}" x2="{CHART_W - PAD_R}" y2="{CHART_H - PAD_B}"/>']
    for i in range(5):
        value = left_top * i / 4
        y = _y(value, left_top)
        parts.append(f'<line class="grid" x1="{PAD_L}" y1="{y:.1f}" x2="{CHART_W - PAD_R}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{format(value, left_fmt)}</text>')
        if right_top is not None:
            parts.append(f'<text x="{CHART_W - PAD_R + 6}" y="{y + 4:.1f}">{format(right_top * i / 4, right_fmt)}</text>')
    return parts


def _svg(parts: list[str], label: str, css: str = "chart") -> str:
    return (f'<svg class="{css}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{escape(label)}">'
            + "".join(parts) + "</svg>")


def growth_chart(plan) -> str:
    points = [p for p in plan.growth if p.replicas_needed is not None]
    if not points:
        return ""
    top = _nice_max(max(p.replicas_with_headroom for p in points))
    cost_top = _nice_max(max(p.cost_per_hour or 0 for p in points))
    parts = _axes(top, cost_top, "g", ",.0f")
    slot = (CHART_W - PAD_L - PAD_R) / len(points)
    line = []
    for i, p in enumerate(points):
        x0 = PAD_L + slot * i + slot * 0.2
        width = slot * 0.28
        for j, (value, css) in enumerate(((p.replicas_needed, "s1"), (p.replicas_with_headroom, "s2"))):
            y = _y(value, top)
            parts.append(f'<rect class="{css}" x="{x0 + j * width:.1f}" y="{y:.1f}" width="{width - 2:.1f}" '
                         f'height="{CHART_H - PAD_B - y:.1f}"><title>{p.multiplier:g}×: {value} replicas</title></rect>')
            parts.append(f'<text x="{x0 + j * width + width / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle">{value}</text>')
        parts.append(f'<text x="{PAD_L + slot * (i + 0.5):.1f}" y="{CHART_H - PAD_B + 16}" text-anchor="middle">'
                     f'{p.multiplier:g}× ({p.requests_per_second:.3g} req/s)</text>')
        if p.cost_per_hour is not None:
            line.append((PAD_L + slot * (i + 0.5), _y(p.cost_per_hour, cost_top), p.cost_per_hour))
    if line:
        parts.append('<polyline class="line s3" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in line) + '"/>')
        parts += [f'<circle class="s3" cx="{x:.1f}" cy="{y:.1f}" r="3.5"><title>${c:,.2f}/h</title></circle>'
                  for x, y, c in line]
    return _svg(parts, "replicas and cost per hour by traffic multiplier")


def memory_chart(plan, gpu_memory_bytes: float) -> str:
    parts = []
    segments = [("weights", plan.weights_bytes_per_gpu, "s4"),
                ("runtime reserve", plan.activation_reserve_bytes_per_gpu, "s2"),
                ("KV cache", plan.kv_cache_bytes_per_gpu, "s1")]
    total = max(gpu_memory_bytes, sum(v for _, v, _ in segments))
    x, width, y, height = 8, 344, 30, 46
    parts.append(f'<rect x="{x}" y="{y}" width="{width}" height="{height}" style="fill: var(--soft)"/>')
    for name, value, css in segments:
        w = width * value / total
        parts.append(f'<rect class="{css}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{height}">'
                     f'<title>{name}: {value / GiB:.2f} GiB</title></rect>')
        if w > 40:
            parts.append(f'<text x="{x + 2:.1f}" y="{y + height + 16}">{value / GiB:.1f} GiB</text>')
        x += w
    parts.append(f'<text x="8" y="{y - 10}">{gpu_memory_bytes / GiB:.1f} GiB per GPU · '
                 f'{plan.kv_tokens_per_replica:,} KV tokens per replica</text>')
    return (f'<svg class="chart" viewBox="0 0 360 100" role="img" aria-label="memory per GPU">'
            + "".join(parts) + "</svg>")


def latency_chart(curve: list[dict], ttft_slo: float | None, itl_slo: float | None) -> str:
    if not curve:
        return ""
    x_top = curve[-1]["requests_per_second"]
    top = _nice_max(max([p["ttft_p95_seconds"] for p in curve] + [ttft_slo or 0]))
    itl_top = _nice_max(max([p["itl_p95_seconds"] for p in curve] + [itl_slo or 0]) * 1000)
    parts = _axes(top, itl_top, ".2g", "g")

    def x(rate: float) -> float:
        return PAD_L + (CHART_W - PAD_L - PAD_R) * rate / x_top

    for i in range(0, len(curve), max(1, len(curve) // 6)):
        rate = curve[i]["requests_per_second"]
        parts.append(f'<text x="{x(rate):.1f}" y="{CHART_H - PAD_B + 16}" text-anchor="middle">{rate:.3g}</text>')
    parts.append(f'<text x="{CHART_W / 2:.0f}" y="{CHART_H - 2}" text-anchor="middle">requests/s per replica '
                 f'(saturation at {x_top:.3g})</text>')
    series = [("ttft_p95_seconds", top, 1, "s1", ""), ("ttft_p50_seconds", top, 1, "s3", ""),
              ("itl_p95_seconds", itl_top, 1000, "s2", " dashed")]
    for key, axis_top, scale, css, dash in series:
        coords = " ".join(f"{x(p['requests_per_second']):.1f},{_y(p[key] * scale, axis_top):.1f}" for p in curve)
        parts.append(f'<polyline class="line {css}{dash}" points="{coords}"><title>{key}</title></polyline>')
    for slo, axis_top, scale, label in ((ttft_slo, top, 1, "TTFT SLO"), (itl_slo, itl_top, 1000, "ITL SLO")):
        if slo is not None and slo * scale <= axis_top:
            y = _y(slo * scale, axis_top)
            parts.append(f'<line class="slo" x1="{PAD_L}" y1="{y:.1f}" x2="{CHART_W - PAD_R}" y2="{y:.1f}"/>')
            parts.append(f'<text class="slo-label" x="{PAD_L + 4}" y="{y - 4:.1f}">{label}</text>')
    return _svg(parts, "TTFT and ITL against requests per second for one replica", "chart wide")


def render_html(plan, curve: list[dict], deployment, source: str) -> str:
    """The plan as one self-contained page, styled with the readiness report's own CSS."""
    import re

    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    from forge.hardware import get

    report = (TEMPLATES / "report.html.j2").read_text()
    base_css = re.search(r"<style>(.*?)</style>", report, re.S).group(1)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["j2", "html"]))
    slo = deployment.slo
    charts = {
        "growth": Markup(growth_chart(plan)),
        "memory": Markup(memory_chart(plan, get(plan.gpu).memory_bytes)),
        "latency": Markup(latency_chart(curve, slo.ttft_p95_seconds if slo else None,
                                        slo.itl_p95_seconds if slo else None)),
    }
    return env.get_template("capacity.html.j2").render(
        plan=plan, curve=curve, charts=charts, name=deployment.metadata.name, source=source,
        base_css=Markup(base_css), fmt=_fmt)


@app.command("plan")
def plan_cmd(
    deploy_file: Annotated[Path, typer.Argument(help="deploy.yaml to plan")],
    output_format: Annotated[PlanFormat, typer.Option("--format", "-f", help="table, json or html")] = PlanFormat.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout")] = None,
) -> None:
    """Does it fit, how many KV tokens, how fast, how many replicas at 1×/3×/10×, at what cost."""
    from forge.loader import load
    from forge.readiness.capacity import estimate

    from forge.readiness.capacity import latency_curve

    try:
        loaded = load(deploy_file)
        plan = estimate(loaded.deployment, loaded.path.parent)
        curve = latency_curve(loaded.deployment, loaded.path.parent) if output_format is PlanFormat.html else []
    except InputError as exc:
        for message in exc.messages:
            sys.stderr.write(f"error: {message}\n")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if output_format is PlanFormat.html:
        text = render_html(plan, curve, loaded.deployment, str(deploy_file))
    elif output_format is PlanFormat.json:
        text = json.dumps(plan.to_dict(), indent=2) + "\n"
    else:
        text = None
    if text is not None:
        if output is not None:
            output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    else:
        # Wide enough for the growth table even when piped (rich falls back to 80 columns there).
        _table(plan, Console(width=max(Console().width, 150)))


def _calibration_table(report: dict, console: Console, title: str = "Calibration") -> None:
    c = report["conditions"]
    source = report.get("efficiency", {}).get("source", "hardware catalog")
    table = Table(title=f"{title} — {c['requests_ok']} requests at {_fmt(c['offered_requests_per_second'], '.2f')} "
                        f"req/s over {_fmt(c['window_seconds'], '.1f')} s on {c['gpu']}, "
                        f"{_fmt(c.get('prompt_tokens_mean'), '.0f')}/{_fmt(c.get('output_tokens_mean'), '.0f')} tokens "
                        f"(factors: {source}; ±{report['tolerance_pct']:g} % on p50s and throughput)")
    for column in ("metric", "predicted", "measured", "error %", f"within ±{report['tolerance_pct']:g} %"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report["rows"]:
        seconds = row["metric"].endswith("_seconds")
        spec = ".2f" if not seconds else ".1f"
        scale = 1000 if seconds else 1
        unit = " ms" if seconds else ""
        within = {True: "yes", False: "NO", None: "(shown)"}[row["within_tolerance"]]
        table.add_row(row["metric"].replace("_seconds", ""),
                      _fmt(row["predicted"] and row["predicted"] * scale, spec) + unit,
                      _fmt(row["measured"] and row["measured"] * scale, spec) + unit,
                      _fmt(row["error_pct"], "+.1f"), within)
    console.print(table)


def _run_load(target: str, deploy_file: Path, out: Path, rate: float, duration: float, max_requests: int | None,
              prompt_tokens: str | None, output_tokens: str | None, seed: int) -> None:
    """A short bounded `forge load run` (its own process: the clients' timing is not shared with the model)."""
    import subprocess

    cmd = [sys.executable, "-m", "forge.load", "run", "--no-progress", "--target", target, "--rate", f"{rate:g}",
           "--duration", f"{duration:g}", "--out", str(out), "--deploy", str(deploy_file), "--seed", str(seed)]
    if max_requests:
        cmd += ["--max-requests", str(max_requests)]
    if prompt_tokens:
        cmd += ["--prompt-tokens", prompt_tokens]
    if output_tokens:
        cmd += ["--output-tokens", output_tokens]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    # Exit 1 only says the run missed the deploy's SLO: the records are still a measurement to compare with.
    if done.returncode not in (0, 1) or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"--target {target}: the load run failed ({last})")


WARMUP_SEED_OFFSET = 1_000_003  # the warm-up's prompts differ from every measured run's (no prefix-cache hits)


# The issue's three traffic shapes (prompt, output, requests/s): light enough for one CPU replica of the tiny model
# to keep up, so that medians measure the engine rather than a queue that grows for as long as the run lasts.
CALIBRATION_SHAPES = {
    "short-chat": ("fixed:64", "fixed:32", 4.0),
    "long-prompt": ("fixed:768", "fixed:16", 1.0),
    "long-output": ("fixed:32", "fixed:192", 1.5),
}


def parse_shape(spec: str) -> tuple[str, str, str, float]:
    """`short-chat` | `long-prompt` | `long-output` | `PROMPT,OUTPUT,RATE` (forge load run's length forms)."""
    if spec in CALIBRATION_SHAPES:
        return (spec, *CALIBRATION_SHAPES[spec])
    parts = spec.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        rate = float(parts[2])
        if not rate > 0:
            raise ValueError
    except ValueError:
        raise InputError(f"--shape {spec!r}: use {', '.join(CALIBRATION_SHAPES)} or PROMPT,OUTPUT,RATE (e.g. "
                         "fixed:256,fixed:64,2)") from None
    return spec, parts[0], parts[1], rate


def _engine_version(target: str) -> str | None:
    """'vllm 0.32.0' from the engine's /version (vLLM's OpenAI server has it), or None."""
    import httpx

    try:
        response = httpx.get(target.rstrip("/") + "/version", timeout=2.0, trust_env=False)
        version = response.json().get("version") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return f"vllm {version}" if version else None


def _fit_table(result: dict, console: Console) -> None:
    table = Table(title=f"Fitted on {len(result['runs'])} run(s): predicted with the catalog's factors → fitted factors, "
                        f"against measured (±{result['tolerance_pct']:g} %)")
    for column in ("run", "metric", "catalog", "fitted", "measured", "error %", "within"):
        table.add_column(column, justify="left" if column in ("run", "metric") else "right")
    for run in result["runs"]:
        for before, after in zip(run["before"]["rows"], run["after"]["rows"]):
            if after["within_tolerance"] is None:
                continue
            seconds = after["metric"].endswith("_seconds")
            scale, spec, unit = (1000, ".1f", " ms") if seconds else (1, ".1f", "")
            table.add_row(run["source"], after["metric"].replace("_seconds", ""),
                          _fmt(before["predicted"] and before["predicted"] * scale, spec) + unit,
                          _fmt(after["predicted"] and after["predicted"] * scale, spec) + unit,
                          _fmt(after["measured"] and after["measured"] * scale, spec) + unit,
                          _fmt(after["error_pct"], "+.1f"), "yes" if after["within_tolerance"] else "NO")
    console.print(table)
    eff = result["efficiency"]
    console.print("fitted: " + ", ".join(
        f"{k} {v}" if not isinstance(v, dict) else f"{k} " + ", ".join(f"{p} {x:.3g}" for p, x in v.items())
        for k, v in eff.items()))
    if result.get("saved"):
        console.print(f"saved to {result['saved']} — point deploy.yaml's hardware.calibration at it")


@app.command("calibrate")
def calibrate_cmd(
    deploy_file: Annotated[Path, typer.Option("--deploy", help="deploy.yaml whose model predicts the run")],
    target: Annotated[str | None, typer.Option("--target", help="Base URL of a live engine to load "
                                               "(loopback), e.g. http://127.0.0.1:8000")] = None,
    results: Annotated[list[Path] | None, typer.Option("--results", help="results.jsonl of a `forge load run` "
                                                       "instead of a live run (repeat for several)")] = None,
    shapes: Annotated[list[str] | None, typer.Option(
        "--shape", help="Live runs, one per shape: short-chat, long-prompt, long-output or PROMPT,OUTPUT,RATE "
                        "(repeat; `all` = the three; default: one run of --prompt-tokens/--output-tokens at --rate)")] = None,
    rate: Annotated[float, typer.Option("--rate", help="Poisson requests/s of the live run")] = 2.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of each live run")] = 20.0,
    warmup: Annotated[float, typer.Option(
        "--warmup", help="Seconds of unrecorded load (the first run's shape) before the live runs: a fresh engine's "
                         "first requests pay one-time costs; 0 if it has served already")] = 5.0,
    max_requests: Annotated[int | None, typer.Option("--max-requests", min=1, help="At most N requests")] = None,
    prompt_tokens: Annotated[str | None, typer.Option("--prompt-tokens", help="Shape as `forge load run` takes it "
                                                      "(default: deploy.yaml traffic)")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output-tokens", help="Same forms")] = None,
    prefix_hit_rate: Annotated[float, typer.Option(
        "--prefix-hit-rate", min=0.0, max=1.0, help="Prefix-cache hit rate of the measured runs (forge load run's "
                                                    "prompts share none unless given --shared-prefix-tokens)")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the live run")] = 0,
    save: Annotated[Path | None, typer.Option("--save", help="Fit the efficiency factors to the runs and write them "
                                              "here (YAML) for deploy.yaml's hardware.calibration")] = None,
    output_format: Annotated[PlanFormat, typer.Option("--format", "-f", help="table or json")] = PlanFormat.table,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Also write the JSON report here")] = None,
) -> None:
    """Predicted vs measured TTFT, ITL and throughput at measured loads (±25 %); with --save, fit and store the factors."""
    import datetime
    import os
    import tempfile

    import yaml

    from forge.load.metrics import read_results
    from forge.loader import load
    from forge.readiness.capacity import (CALIBRATION_FIT_FORMAT, CALIBRATION_TOLERANCE, calibrate,
                                          calibration_document, fit_efficiency)

    try:
        if (target is None) == (not results):
            raise InputError("give exactly one of --target URL (a live run) or --results results.jsonl")
        if rate <= 0 or duration <= 0:
            raise InputError(f"--rate {rate:g} and --duration {duration:g} must be > 0")
        if warmup < 0:
            raise InputError(f"--warmup {warmup:g}: give seconds ≥ 0 (0: no warm-up)")
        if output_format is PlanFormat.html:
            raise InputError("--format html is for `forge capacity plan`; calibrate prints table or json")
        if shapes and target is None:
            raise InputError("--shape runs live loads: give --target URL with it")
        if save is not None and (save.is_dir() or not save.parent.is_dir()):
            raise InputError(f"--save {save}: give a file in an existing directory")
        runs_to_do = [parse_shape(s) for name in (shapes or []) for s in
                      (list(CALIBRATION_SHAPES) if name == "all" else [name])]
        loaded = load(deploy_file)
        sources: list[str] = []
        runs: list[list[dict]] = []
        engine = None
        if target is not None:
            with tempfile.TemporaryDirectory(prefix="forge-calibrate-") as tmp:
                plan = runs_to_do or [(None, prompt_tokens, output_tokens, rate)]
                # A spinner on a terminal (minutes of live load); nothing on a pipe or in CI logs.
                status = Console(stderr=True)
                if warmup > 0:
                    _, prompt, output, shape_rate = plan[0]
                    with status.status(f"warm-up: {warmup:g} s at {shape_rate:g} req/s (not recorded)"):
                        _run_load(target, deploy_file, Path(tmp) / "warmup.jsonl", shape_rate, warmup, None, prompt,
                                  output, seed + WARMUP_SEED_OFFSET)
                for index, (name, prompt, output, shape_rate) in enumerate(plan):
                    out = Path(tmp) / f"results-{index}.jsonl"
                    with status.status(f"run {index + 1}/{len(plan)} {name or ''}: {duration:g} s at "
                                       f"{shape_rate:g} req/s"):
                        _run_load(target, deploy_file, out, shape_rate, duration, max_requests, prompt, output,
                                  seed + index)
                    runs.append(read_results(out))
                    sources.append(name or target)
            engine = _engine_version(target)
        else:
            for path in results:
                runs.append(read_results(path))
                sources.append(str(path))
        base_dir = loaded.path.parent
        if save is None and len(runs) == 1:
            report = calibrate(loaded.deployment, runs[0], base_dir, prefix_hit_rate)
            report["conditions"]["source"] = sources[0]
        elif save is None:
            reports = [calibrate(loaded.deployment, records, base_dir, prefix_hit_rate) for records in runs]
            for source, one in zip(sources, reports):
                one["conditions"]["source"] = source
            report = {"format": "forge.capacity.calibration-runs/v1", "tolerance_pct": 100 * CALIBRATION_TOLERANCE,
                      "runs": reports, "all_within_tolerance": all(r["all_within_tolerance"] for r in reports)}
        else:
            fit = fit_efficiency(loaded.deployment, runs, base_dir, prefix_hit_rate)
            created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
            document = calibration_document(loaded.deployment, fit, sources, engine, created, os.getloadavg())
            header = (f"# Efficiency factors for {document['gpu']} fitted by `forge capacity calibrate` on {created}.\n"
                      "# Point deploy.yaml's hardware.calibration at this file (relative to it); docs/capacity.md.\n")
            save.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
            report = {"format": CALIBRATION_FIT_FORMAT, "tolerance_pct": 100 * CALIBRATION_TOLERANCE,
                      "saved": str(save), "efficiency": document["efficiency"], "fit": {
                          k: document["fit"][k] for k in ("loss", "evaluations", "max_abs_error_pct", "rms_error_pct")},
                      "runs": [{"source": s, "before": b, "after": a}
                               for s, b, a in zip(sources, fit["before"], fit["after"])]}
    except InputError as exc:
        for message in exc.messages:
            sys.stderr.write(f"error: {message}\n")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    text = json.dumps(report, indent=2) + "\n"
    if json_out is not None:
        json_out.write_text(text)
    if output_format is PlanFormat.json:
        sys.stdout.write(text)
        return
    console = Console(width=max(Console().width, 120))
    if report["format"] == CALIBRATION_FIT_FORMAT:
        _fit_table(report, console)
    else:
        for one in report.get("runs", [report]):
            _calibration_table(one, console, f"Calibration {one['conditions'].get('source', '')}".strip())


@app.callback()
def _capacity() -> None:
    """Capacity & cost model."""
