"""`forge load ...` (mounted by forge/cli.py as `load`): run load against an OpenAI-compatible endpoint, summarize a
run, import results of other tools as readiness evidence.

Exit codes: 0 success; 1 the run missed a deploy.yaml SLO at p95 (only with --deploy); 2 bad input or usage;
130 interrupted (what was done is written).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from typer.core import TyperCommand

from forge.console import error as _err
from forge.console import one_line_input_errors, write_atomic

try:  # recent typer vendors click; its UsageError is not click's
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer on plain click
    from click.exceptions import UsageError

from forge.errors import InputError
from forge.load.client import OUTCOMES
from forge.load.evidence import load_evidence
from forge.load.metrics import distribution, read_results, summarize
from forge.load.prompts import LengthDistribution, PromptFactory, calibrate
from forge.load.runner import (LiveStats, ResultWriter, RunOptions, check_target, plan_rate, plan_trace,
                               run_plan)
from forge.load.traces import load_trace

EXIT_OK, EXIT_SLO_MISSED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
PROGRESS_REFRESH_S = 0.5
VERIFY_SAMPLE_PROMPTS = 3


class OneLineErrors(TyperCommand):
    """Bad flags get one line on stderr and exit 2, like every other input error of Forge (not click's usage box)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            sys.stderr.write(f"forge: error: load {info_name}: {exc.format_message()}\n")
            raise typer.Exit(EXIT_BAD_INPUT) from None


app = typer.Typer(help="Load generation and traffic replay against OpenAI-compatible endpoints; every request "
                       "accounted for.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class Arrival(str, Enum):
    constant = "constant"
    poisson = "poisson"
    gamma = "gamma"


class Api(str, Enum):
    completions = "completions"
    chat = "chat"


_guarded = one_line_input_errors


def _load_deployment(path: Optional[Path]):
    if path is None:
        return None
    from forge.loader import load  # deferred: only runs that grade against a deploy.yaml pay for it

    return load(path).deployment


def _parse_window(text: Optional[str]) -> tuple[float, float] | None:
    if not text:
        return None
    start, sep, end = text.partition(":")
    try:
        window = (float(start or 0), float(end) if end else float("inf"))
    except ValueError:
        raise InputError(f"--trace-window {text!r}: give START:END in trace seconds, e.g. 60:120") from None
    if not sep or window[0] < 0 or window[1] <= window[0]:
        raise InputError(f"--trace-window {text!r}: give START:END with 0 <= START < END, e.g. 60:120")
    return window


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def _progress_table(stats: LiveStats, started: float, duration_s: float):
    from rich.table import Table

    now = time.perf_counter()
    recent = [t for t in stats.recent_sends if now - t <= 5.0]
    ttft = distribution(stats.recent_ttft)["p95"]
    itl = distribution(stats.recent_itl)["p95"]
    errors = {k: v for k, v in stats.outcomes.items() if k != "ok" and v}
    table = Table.grid(padding=(0, 2))
    table.add_row(f"[bold]{now - started:5.1f}[/]/{duration_s:g} s",
                  f"sent {stats.dispatched}/{stats.planned}",
                  f"rate {len(recent) / 5.0:.1f}/s",
                  f"in flight {stats.in_flight}",
                  f"ok {stats.outcomes.get('ok', 0)}",
                  f"TTFT p95 {ttft * 1000:.0f} ms" if ttft is not None else "TTFT p95 -",
                  f"ITL p95 {itl * 1000:.1f} ms" if itl is not None else "ITL p95 -",
                  ("[red]errors " + " ".join(f"{k}={v}" for k, v in errors.items()) + "[/]") if errors else "errors 0")
    return table


async def _discover_model(client: httpx.AsyncClient, base_url: str) -> tuple[str, int | None]:
    try:
        response = await client.get(f"{base_url}/v1/models")
        response.raise_for_status()
        first = response.json()["data"][0]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"--target {base_url}: GET /v1/models failed ({type(exc).__name__}: {str(exc)[:120]}) — "
                         "start the server, fix the URL, or name the model with --model") from None
    return first["id"], first.get("max_model_len")


async def _run_async(args: dict[str, Any]) -> tuple[list[dict], int, dict[str, Any], bool]:
    base_url = args["base_url"]
    async with httpx.AsyncClient(timeout=httpx.Timeout(args["request_timeout"], connect=10.0),
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)) as client:
        model, max_model_len = args["model"], None
        if model is None:
            model, max_model_len = await _discover_model(client, base_url)
        deployment = args["deployment"]
        if deployment is not None and deployment.model.max_model_len:
            max_model_len = deployment.model.max_model_len
        plan = args["plan"]
        if max_model_len:
            # Keep prompt + output within the context: a plan the engine must reject measures nothing.
            for spec in plan:
                spec.output_tokens_target = min(spec.output_tokens_target, max_model_len - 1)
                spec.prompt_tokens_target = max(1, min(spec.prompt_tokens_target,
                                                       max_model_len - spec.output_tokens_target))
        calibration = await calibrate(client, base_url, model, args["api"])
        prompts = PromptFactory(calibration, seed=args["seed"], shared_prefix_tokens=args["shared_prefix_tokens"],
                                prefix_groups=args["prefix_groups"])
        if plan:
            await prompts.verify(client, base_url, model, args["api"],
                                 [(s.index, s.prompt_tokens_target) for s in plan[:VERIFY_SAMPLE_PROMPTS]])
        options = RunOptions(base_url=base_url, model=model, api=args["api"], stream=args["stream"],
                             ignore_eos=args["ignore_eos"], concurrency_limit=args["concurrency_limit"],
                             request_timeout_s=args["request_timeout"])
        stop = asyncio.Event()
        interrupted = False

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            stop.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        stats = LiveStats()
        out: Path = args["out"]
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as handle:
            writer = ResultWriter(handle)
            display = None
            if args["progress"]:
                from rich.console import Console
                from rich.live import Live

                display = Live(console=Console(stderr=True), auto_refresh=False, transient=False)
                display.start()
            started = time.perf_counter()

            async def refresh() -> None:
                while True:
                    display.update(_progress_table(stats, started, args["duration"]), refresh=True)
                    await asyncio.sleep(PROGRESS_REFRESH_S)

            refresher = asyncio.create_task(refresh()) if display else None
            cpu_before = time.process_time()
            try:
                dispatched = await run_plan(plan, prompts, options, writer, stop=stop, stats=stats)
            finally:
                # The client's own cost while sending (start-up and tokenizer calibration excluded), comparable
                # across load generators: benchmarks/load_gen.py reports it per 1,000 requests.
                run_cpu_s = time.process_time() - cpu_before
                loop.remove_signal_handler(signal.SIGINT)
                if refresher:
                    refresher.cancel()
                    display.update(_progress_table(stats, started, args["duration"]), refresh=True)
                    display.stop()
        meta = {"target": base_url, "model": model, "api": args["api"], "stream": args["stream"],
                "arrival": args["arrival_meta"], "planned": len(plan), "concurrency_limit": args["concurrency_limit"],
                "request_timeout_s": args["request_timeout"], "ignore_eos": args["ignore_eos"],
                "shared_prefix_tokens": args["shared_prefix_tokens"], "prefix_groups": args["prefix_groups"],
                "seed": args["seed"], "tokenizer": calibration.as_dict(), "interrupted": interrupted,
                "client_cpu_s": round(run_cpu_s, 4),
                "results": str(out)}
        return writer.records, dispatched, meta, interrupted


@app.command("run", cls=OneLineErrors)
@_guarded
def run_cmd(
    target: Annotated[str, typer.Option("--target", help="Base URL of the OpenAI-compatible server, e.g. "
                                                          "http://127.0.0.1:8000 (loopback only by default).")],
    duration: Annotated[float, typer.Option("--duration", help="Send requests due within this many seconds.")],
    out: Annotated[Path, typer.Option("--out", help="results.jsonl: one JSON line per request, flushed as it ends.")],
    rate: Annotated[Optional[float], typer.Option("--rate", help="Mean requests per second (or use --trace).")] = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Replay a trace: Azure CSV "
                                                  "(TIMESTAMP,ContextTokens,GeneratedTokens) or Forge JSONL.")] = None,
    arrival: Annotated[Arrival, typer.Option("--arrival", help="Arrival process for --rate.")] = Arrival.poisson,
    burstiness: Annotated[float, typer.Option("--burstiness", help="CV of inter-arrival gaps for --arrival gamma "
                                              "(1 = Poisson, >1 bursty).")] = 1.0,
    speedup: Annotated[float, typer.Option("--speedup", help="Replay the trace this many times faster.")] = 1.0,
    trace_window: Annotated[Optional[str], typer.Option("--trace-window", help="START:END trace seconds to replay."
                                                        )] = None,
    max_requests: Annotated[Optional[int], typer.Option("--max-requests", min=1, help="Send at most N requests."
                                                        )] = None,
    concurrency_limit: Annotated[Optional[int], typer.Option("--concurrency-limit", min=1,
                                 help="At most N requests in flight; later ones wait (their lag shows it).")] = None,
    prompt_tokens: Annotated[Optional[str], typer.Option("--prompt-tokens", help="fixed:N | uniform:LO:HI | "
                             "normal:MEAN:STD | lognormal:MEDIAN:P95[:MAX] (default: deploy.yaml traffic, else "
                             "fixed:128).")] = None,
    output_tokens: Annotated[Optional[str], typer.Option("--output-tokens", help="Same forms (default: deploy.yaml "
                             "traffic, else fixed:64).")] = None,
    shared_prefix_tokens: Annotated[int, typer.Option("--shared-prefix-tokens", min=0,
                                    help="Every prompt starts with its group's common prefix of N tokens.")] = 0,
    prefix_groups: Annotated[int, typer.Option("--prefix-groups", min=1, help="Number of distinct shared prefixes."
                                               )] = 1,
    api: Annotated[Api, typer.Option("--api", help="completions or chat.")] = Api.completions,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Stream tokens (SSE).")] = True,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos/--no-ignore-eos",
                          help="Ask for exactly max_tokens (vLLM/SGLang ignore_eos).")] = True,
    model: Annotated[Optional[str], typer.Option("--model", help="Model name (default: the first of /v1/models).")
                     ] = None,
    deploy: Annotated[Optional[Path], typer.Option("--deploy", help="deploy.yaml: SLOs for goodput, traffic shape "
                                                   "defaults, max_model_len.")] = None,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds before a request counts as "
                                                   "timeout.")] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of arrivals, lengths and prompts.")] = 0,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary here.")
                            ] = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Permit a non-loopback target.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on stderr "
                                           "(default: when stderr is a terminal).")] = None,
) -> None:
    """Send load to TARGET and record every request; prints the summary as JSON."""
    base_url = check_target(target, allow_remote)
    if (rate is None) == (trace is None):
        raise InputError("give exactly one of --rate R or --trace FILE")
    if duration <= 0:
        raise InputError(f"--duration {duration:g}: must be > 0 seconds")
    if rate is not None and rate <= 0:
        raise InputError(f"--rate {rate:g}: must be > 0 requests per second")
    if burstiness < 0 or (burstiness != 1.0 and arrival != Arrival.gamma):
        raise InputError(f"--burstiness {burstiness:g}: applies to --arrival gamma only, and must be >= 0")
    if request_timeout <= 0:
        raise InputError(f"--request-timeout {request_timeout:g}: must be > 0 seconds")
    if trace is None and (speedup != 1.0 or trace_window):
        raise InputError("--speedup and --trace-window apply to --trace only")
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory — give a file path, e.g. {out}/results.jsonl")
    deployment = _load_deployment(deploy)
    traffic = deployment.traffic if deployment is not None else None
    if trace is not None:
        entries = load_trace(trace, speedup=speedup, window=_parse_window(trace_window))
        plan = plan_trace(entries, duration_s=duration, max_requests=max_requests, prefix_groups=prefix_groups)
        arrival_meta = {"kind": "trace", "trace": str(trace), "speedup": speedup, "window": trace_window}
    else:
        def lengths(spec: Optional[str], flag: str, profile, default: str) -> LengthDistribution:
            if spec:
                return LengthDistribution.parse(spec, flag)
            if profile is not None:
                return LengthDistribution.from_profile(profile.p50, profile.p95, profile.max)
            return LengthDistribution.parse(default, flag)

        plan = plan_rate(arrival=arrival.value, rate=rate, burstiness=burstiness, duration_s=duration,
                         max_requests=max_requests,
                         prompt_lengths=lengths(prompt_tokens, "--prompt-tokens",
                                                traffic.prompt_tokens if traffic else None, "fixed:128"),
                         output_lengths=lengths(output_tokens, "--output-tokens",
                                                traffic.output_tokens if traffic else None, "fixed:64"),
                         seed=seed, prefix_groups=prefix_groups)
        arrival_meta = {"kind": arrival.value, "rate": rate, "burstiness_cv": burstiness}
    if progress is None:
        progress = sys.stderr.isatty()
    args = dict(base_url=base_url, model=model, deployment=deployment, plan=plan, api=api.value, stream=stream,
                ignore_eos=ignore_eos, concurrency_limit=concurrency_limit, request_timeout=request_timeout,
                seed=seed, shared_prefix_tokens=shared_prefix_tokens, prefix_groups=prefix_groups, out=out,
                duration=duration, progress=progress, arrival_meta=arrival_meta)
    records, dispatched, meta, interrupted = asyncio.run(_run_async(args))
    slo = deployment.slo if deployment is not None else None
    summary = summarize(records, scheduled=dispatched, slo=slo, meta=meta)
    if summary_json:
        _write_json(summary_json, summary)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    if interrupted:
        _err(f"interrupted: {len(records)} of {dispatched} dispatched requests written to {out} "
             f"({len(plan) - dispatched} planned requests not sent)")
        raise typer.Exit(EXIT_INTERRUPTED)
    if not summary["requests"]["accounted"]:
        _err(f"{out}: {len(records)} records for {dispatched} dispatched requests — some requests are unaccounted")
        raise typer.Exit(EXIT_SLO_MISSED)
    missed = [k for k, met in ((summary.get("goodput") or {}).get("slo_p95_met") or {}).items() if met is False]
    if missed:
        _err(f"SLO missed at p95: {', '.join(missed)} (see latency_s in the summary)")
        raise typer.Exit(EXIT_SLO_MISSED)


@app.command("summarize", cls=OneLineErrors)
@_guarded
def summarize_cmd(
    results: Annotated[Path, typer.Argument(help="results.jsonl written by `forge load run`.")],
    deploy: Annotated[Optional[Path], typer.Option("--deploy", help="deploy.yaml whose SLOs define goodput.")] = None,
    summary_json: Annotated[Optional[Path], typer.Option("--summary-json", help="Also write the summary here.")
                            ] = None,
) -> None:
    """Recompute the summary of a results.jsonl (e.g. against another deploy.yaml's SLOs)."""
    deployment = _load_deployment(deploy)
    summary = summarize(read_results(results), slo=deployment.slo if deployment is not None else None)
    if summary_json:
        _write_json(summary_json, summary)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


@app.command("evidence", cls=OneLineErrors)
@_guarded
def evidence_cmd(
    path: Annotated[Path, typer.Argument(help="Results of forge load, vllm bench serve --save-result, GuideLLM or "
                                              "AIPerf (profile_export_aiperf.json).")],
    deploy: Annotated[Optional[Path], typer.Option("--deploy", help="SLOs for goodput of forge results.jsonl.")
                      ] = None,
    benchmark_index: Annotated[int, typer.Option("--benchmark-index", min=0,
                                                 help="Which benchmark of a GuideLLM report.")] = 0,
) -> None:
    """Print the normalized readiness-evidence record of a results file as JSON."""
    deployment = _load_deployment(deploy)
    record = load_evidence(path, slo=deployment.slo if deployment is not None else None,
                           benchmark_index=benchmark_index)
    sys.stdout.write(json.dumps(record, indent=2) + "\n")


__all__ = ["app", "OUTCOMES"]
