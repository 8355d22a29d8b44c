"""`forge exporter …` — mounted by forge/cli.py as `app.add_typer(exporters.cli.app, name="exporter")`.

    forge exporter run --config exporter.yaml
    forge exporter run --deploy deploy.yaml --target http://127.0.0.1:8000/metrics [--target …]
    forge exporter run --config exporter.yaml --once        # one cycle, the page on stdout, then exit
    forge exporter run --config exporter.yaml --otlp-endpoint http://127.0.0.1:4318   # also push OTLP/HTTP
    forge exporter check http://127.0.0.1:8000/metrics [--format json]

Exit codes: 0 ok, 1 the checked target is down or not a metrics page (or, with --once, the OTLP receiver did not
accept the push), 2 bad input or usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge.errors import InputError

EXIT_OK, EXIT_TARGET_DOWN, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(help="Scrape engines, GPUs and cost into one Prometheus page of catalog signals.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


class GpuMode(str, Enum):
    off = "off"
    nvml = "nvml"
    dcgm_exporter = "dcgm-exporter"


def _fail(messages: list[str] | str) -> None:
    for m in [messages] if isinstance(messages, str) else messages:
        sys.stderr.write(f"forge: error: {m}\n")
    raise typer.Exit(EXIT_BAD_INPUT)


@app.command("run")
def run_cmd(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="exporter.yaml (see docs/exporter.md).")] = None,
    deploy: Annotated[Optional[Path], typer.Option("--deploy", help="deploy.yaml: team, cost_center, model, "
                                                   "engine and price for the --target URLs.")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help="Engine /metrics URL (with --deploy; "
                                                        "repeat for each replica).")] = None,
    listen: Annotated[Optional[str], typer.Option("--listen", help="host:port to serve /metrics on "
                                                  "(default 127.0.0.1:9400, or the config's).")] = None,
    gpu: Annotated[Optional[GpuMode], typer.Option("--gpu", help="GPU collector with --deploy (default: deploy.yaml's "
                                                   "observability.gpu_metrics).")] = None,
    dcgm_url: Annotated[Optional[str], typer.Option("--dcgm-url", help="dcgm-exporter /metrics URL (--gpu "
                                                    "dcgm-exporter).")] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between cycles with --deploy.")] = 15.0,
    once: Annotated[bool, typer.Option("--once", help="Run one cycle, print the page, exit (no server).")] = False,
    otlp_endpoint: Annotated[Optional[str], typer.Option("--otlp-endpoint", help="Also push the signals as OTLP/HTTP "
                                                         "metrics to URL/v1/metrics (overrides the config's "
                                                         "otlp.endpoint).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every scrape problem.")] = False,
) -> None:
    """Serve /metrics: catalog signals of every target, plus GPU, cost and the exporter's own health."""
    from forge.exporters.config import load_config, parse_listen, settings_from_deploy, with_otlp_endpoint

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="forge exporter: %(levelname)s: %(message)s")
    if (config is None) == (deploy is None):
        _fail("give either --config exporter.yaml or --deploy deploy.yaml --target URL")
    if config is not None and (target or gpu or dcgm_url):
        _fail("--target/--gpu/--dcgm-url go with --deploy; with --config list them in the file")
    if deploy is not None and not target and gpu in (None, GpuMode.off):
        _fail("--deploy needs at least one --target URL (an engine's /metrics)")
    try:
        if config is not None:
            settings = load_config(config)
        else:
            settings = settings_from_deploy(deploy, list(target or ()), gpu_mode=gpu.value if gpu else None,
                                            dcgm_url=dcgm_url, interval_seconds=interval)
        if listen is not None:
            host, port = parse_listen(listen, "--listen")
            settings = type(settings)(**{**settings.__dict__, "listen_host": host, "listen_port": port})
        if otlp_endpoint is not None:
            settings = with_otlp_endpoint(settings, otlp_endpoint)
    except InputError as exc:
        _fail(exc.messages)
    if once:
        page, pushed = asyncio.run(_one_cycle(settings))
        sys.stdout.write(page)
        if pushed is not None and pushed.outcome != "success":
            sys.stderr.write(f"forge exporter: OTLP push {pushed.outcome}: {pushed.detail}\n")
            raise typer.Exit(EXIT_TARGET_DOWN)
        return
    from forge.exporters.server import run_forever

    def ready(service) -> None:
        sys.stderr.write(f"forge exporter: serving {service.url}/metrics — {len(settings.targets)} target(s), "
                         f"every {settings.interval_seconds:g} s\n")
        if settings.otlp is not None:
            from forge.exporters.otlp import safe_url

            sys.stderr.write(f"forge exporter: pushing OTLP/HTTP to {safe_url(settings.otlp.endpoint)} every "
                             f"{settings.otlp.interval_seconds:g} s\n")

    try:
        asyncio.run(run_forever(settings, on_ready=ready))
    except OSError as exc:
        _fail(f"--listen {settings.listen_host}:{settings.listen_port}: {exc.strerror or exc} — pick a free port")


async def _one_cycle(settings):
    """One cycle: the page, and the OTLP push's result when OTLP is configured (else None)."""
    from forge.exporters.server import ExporterService

    service = ExporterService(settings)
    try:
        await service.collect_once()
        pushed = await service.push_otlp_once() if service.otlp is not None else None
        return service.render(), pushed
    finally:
        await service.stop()


_STATUS_STYLE = {"provided": "green", "missing": "red", "unavailable": "yellow", "superseded": "dim",
                 "not_mapped": "dim"}


@app.command("check")
def check_cmd(
    url: Annotated[str, typer.Argument(help="The target's /metrics URL (a bare http://host:port means its /metrics).")],
    engine: Annotated[Optional[str], typer.Option("--engine", help="Catalog dialect (vllm, sglang, tgi, trtllm, "
                                                  "triton_trtllm, dcgm); detected when left out.")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="table or json")] = OutputFormat.table,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole request.")] = 5.0,
) -> None:
    """Which catalog signals URL provides, which are missing, and which its engine can't provide."""
    from forge.catalog import get_catalog
    from forge.exporters.check import check_target
    from forge.exporters.config import _check_url

    try:
        url = _check_url(url)
    except ValueError as exc:
        _fail(f"URL: {exc}")
    if engine is not None and engine not in get_catalog().dialects:
        _fail(f"--engine {engine!r}: unknown — use one of {', '.join(get_catalog().dialects)}")
    if not 0 < timeout <= 300:
        _fail(f"--timeout {timeout:g}: use a number of seconds between 0 and 300")
    result = check_target(url, engine=engine, timeout_seconds=timeout)
    if format is OutputFormat.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        _print_table(result)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_TARGET_DOWN)


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not result.ok:
        console.print(f"[red]down[/red] {result.url}: [bold]{result.reason}[/bold] — {result.detail}")
        return
    table = Table(title=f"{result.url} — {result.dialect} ({len(result.provided())} provided, "
                        f"{len(result.missing())} missing)")
    for column in ("signal", "status", "series", "note"):
        table.add_column(column)
    for s in result.signals:
        style = _STATUS_STYLE.get(s.status, "")
        table.add_row(s.signal, f"[{style}]{s.status}[/{style}]", str(s.series or ""), s.note)
    console.print(table)
    for problem in result.problems:
        console.print(f"[yellow]skipped:[/yellow] {problem}")
