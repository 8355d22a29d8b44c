"""`forge chaos ...` (to be mounted by forge/cli.py as `chaos`): list and run experiments, run the progress watchdog.

Exit codes: 0 experiment completed and steady state held (watchdog: stopped cleanly); 1 the experiment failed,
aborted or deviated; 2 bad input or usage; 130 interrupted (rollbacks ran, the journal is written).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge.console import error as _err
from forge.console import one_line_input_errors

from forge.errors import InputError

EXIT_OK, EXIT_NOT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(help="Chaos game days on loopback: fault experiments with rollbacks and journals, and the progress "
                       "watchdog for hung engines.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


_guarded = one_line_input_errors


def _say(message: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S')} {message}\n")
    sys.stdout.flush()


@app.command("list")
@_guarded
def list_cmd() -> None:
    """List the bundled experiments."""
    from forge.chaos.runner import list_experiments

    for name, title in list_experiments():
        sys.stdout.write(f"{name:<20} {title}\n")


@app.command("run")
@_guarded
def run_cmd(
    experiment: Annotated[str, typer.Argument(help="a bundled experiment name (see `forge chaos list`) or a YAML path")],
    journal: Annotated[Path, typer.Option("--journal", help="where to write the journal (Chaos Toolkit shape)")] = Path("journal.json"),
    stall_seconds: Annotated[Optional[float], typer.Option("--stall-seconds", help="override the watchdog's stall threshold")] = None,
) -> None:
    """Run an experiment against engines it starts on 127.0.0.1, with load; rollbacks always run."""
    from forge.chaos.runner import load_experiment, run_experiment

    spec = load_experiment(experiment)
    overrides = {"stall_seconds": stall_seconds} if stall_seconds is not None else {}
    _say(f"experiment: {spec['title']}")
    try:
        result = run_experiment(spec, journal, overrides=overrides, log=_say)
    except KeyboardInterrupt:
        _err(f"interrupted: rollbacks ran, journal written to {journal}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    m = result.measurements
    _say(f"status {result.status}, deviated {str(result.deviated).lower()}; detection {m.get('detection_seconds')} s "
         f"(stall {m.get('stall_seconds')} s), recovery {m.get('recovery_seconds')} s; load {result.load.get('outcomes')}")
    _say(f"journal: {journal}")
    raise typer.Exit(EXIT_OK if result.status == "completed" and not result.deviated else EXIT_NOT_OK)


@app.command("watchdog")
@_guarded
def watchdog_cmd(
    target: Annotated[list[str], typer.Option("--target", help="engine base URL (or its /metrics URL); repeat per replica")],
    stall_seconds: Annotated[float, typer.Option("--stall-seconds", help="requests running with frozen token counters this long = hung")] = 30.0,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="seconds between scrapes")] = 1.0,
    engine: Annotated[Optional[str], typer.Option("--engine", help="catalog engine of the targets (default: detect)")] = None,
    haproxy_socket: Annotated[Optional[Path], typer.Option("--haproxy-socket", help="HAProxy admin socket: drain hung replicas, ready them on recovery")] = None,
    backend: Annotated[str, typer.Option("--backend", help="HAProxy backend of the servers")] = "engines",
    server: Annotated[Optional[list[str]], typer.Option("--server", help="HAProxy server name of each --target, in order")] = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="stop after this long (default: until Ctrl-C)")] = None,
) -> None:
    """Watch engines' /metrics and declare a replica hung when requests run but no token comes out."""
    from forge.chaos.watchdog import HaproxyDrainHook, ProgressWatchdog, WatchdogLoop, WatchTarget, metrics_url

    if poll_interval <= 0 or poll_interval * 2 > stall_seconds:
        raise InputError(f"--poll-interval {poll_interval}: must be > 0 and at most half of --stall-seconds "
                         f"({stall_seconds})")
    names = list(server or [])
    if names and len(names) != len(target):
        raise InputError(f"--server given {len(names)} time(s) for {len(target)} --target(s): give one per target, in order")
    if haproxy_socket is not None and not names:
        raise InputError("--haproxy-socket needs --server NAME for each --target (the HAProxy server to drain)")
    if haproxy_socket is not None and not haproxy_socket.exists():
        raise InputError(f"--haproxy-socket {haproxy_socket}: no such socket — start the stack or fix the path")
    for url in target:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--target {url!r}: not an http(s) URL — e.g. http://127.0.0.1:8000")
    targets = [WatchTarget(names[i] if names else url, metrics_url(url), engine) for i, url in enumerate(target)]
    drain = HaproxyDrainHook(str(haproxy_socket), backend) if haproxy_socket is not None else None

    def on_transition(transition) -> None:
        _say(f"{transition.replica}: {transition.previous} -> {transition.state} ({transition.reason})")
        if drain is not None:
            drain(transition)

    loop = WatchdogLoop(targets, ProgressWatchdog(stall_seconds), on_transition=on_transition,
                        poll_interval_s=poll_interval)
    _say(f"watching {len(targets)} target(s): stall {stall_seconds:g} s, poll every {poll_interval:g} s")
    loop.start()
    try:
        deadline = time.monotonic() + max_seconds if max_seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        loop.stop()
        raise typer.Exit(EXIT_INTERRUPTED) from None
    loop.stop()
    for error in loop.hook_errors:
        _err(f"hook: {error}")
