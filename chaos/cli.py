"""`forge chaos ...` (mounted by forge/cli.py as `chaos`): list and run experiments, run the progress watchdog and
the spot-interruption drain agent.

Exit codes: 0 experiment completed and steady state held (watchdog: stopped cleanly; drain agent: drained and
stopped the engine in time, or no notice came); 1 the experiment failed, aborted or deviated (drain agent: requests
were still in flight or the engine had to be killed); 2 bad input or usage; 130 interrupted (rollbacks ran, the
journal is written).
"""

from __future__ import annotations

import json
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
    if "lost_requests_with_drain" in m or "lost_requests_without_drain" in m:
        _say(f"status {result.status}, deviated {str(result.deviated).lower()}; lost requests with the drain "
             f"{m.get('lost_requests_with_drain')}, without {m.get('lost_requests_without_drain')}; drain "
             f"{m.get('drain_seconds')} s of a {m.get('notice_seconds')} s {m.get('provider')} notice; "
             f"load {result.load.get('outcomes')}")
    else:
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


@app.command("drain-agent")
@_guarded
def drain_agent_cmd(
    provider: Annotated[str, typer.Option("--provider", help="whose interruption notice to poll: aws (IMDSv2 "
                                          "spot/instance-action) or gcp (instance/preempted)")],
    metadata_url: Annotated[str, typer.Option("--metadata-url", help="base URL of the metadata service, e.g. the "
                                              "game-day endpoint http://127.0.0.1:PORT")],
    replica: Annotated[str, typer.Option("--replica", help="the stack replica to drain: its HAProxy server name "
                                         "(s0, s1, ...)")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="the stack's state dir (forge stack up)")] = Path(".forge/stack"),
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="seconds between metadata polls")] = 1.0,
    safety_margin: Annotated[float, typer.Option("--safety-margin", help="the engine must be gone this many seconds "
                                                 "before the notice runs out")] = 5.0,
    notice_seconds: Annotated[Optional[float], typer.Option("--notice-seconds", help="notice length when the provider "
                                                           "does not publish the time (gcp; default 30)")] = None,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="stop polling after this long "
                                                         "(default: until a notice or Ctrl-C)")] = None,
    allow_remote_metadata: Annotated[bool, typer.Option("--allow-remote-metadata", help="poll a metadata URL that is "
                                                        "not loopback (on a real instance: 169.254.169.254)")] = False,
) -> None:
    """Poll the cloud's interruption notice; on one, drain the replica at HAProxy, wait for its in-flight requests,
    then SIGTERM its engine (by the pid the stack started) within the notice."""
    import threading

    from forge.chaos.spot import PROVIDERS, DrainAgent, NoticeClient, component_target
    from forge.load.runner import is_loopback_url
    from forge.reference_stack.stack import Gateway, StackState

    if provider not in PROVIDERS:
        raise InputError(f"--provider {provider!r}: use {' or '.join(PROVIDERS)}")
    if not metadata_url.startswith("http://"):
        raise InputError(f"--metadata-url {metadata_url!r}: not an http URL — e.g. http://127.0.0.1:8181 (metadata "
                         "services speak plain HTTP)")
    if not allow_remote_metadata and not is_loopback_url(metadata_url):
        raise InputError(f"--metadata-url {metadata_url}: not loopback — game days poll the local endpoint; on a "
                         "real instance pass --allow-remote-metadata")
    if poll_interval <= 0 or safety_margin < 0:
        raise InputError(f"--poll-interval {poll_interval:g} / --safety-margin {safety_margin:g}: the interval must "
                         "be > 0 and the margin >= 0")
    if notice_seconds is not None and notice_seconds <= 0:
        raise InputError(f"--notice-seconds {notice_seconds:g}: must be > 0 (GCP gives 30)")
    state = StackState.load(state_dir)
    if state is None or not state.haproxy_socket.exists():
        raise InputError(f"--state-dir {state_dir}: no running stack there — start one with `forge stack up` or "
                         "give its --state-dir")
    try:
        engine = state.component(f"engine-{replica}")
    except KeyError:
        names = ", ".join(c.name.removeprefix("engine-") for c in state.engines())
        raise InputError(f"--replica {replica!r}: not a replica of the stack in {state_dir} — use one of {names}") from None
    if not engine.leader_alive():
        raise InputError(f"--replica {replica}: its engine (pid {engine.pid}) is not running — restart the stack")
    configured = None
    for flag in ("--shutdown-timeout", "--shutdown-timeout-s"):
        if flag in engine.command:
            configured = int(float(engine.command[engine.command.index(flag) + 1]))

    target = component_target(engine, replica, Gateway(state), configured)
    agent = DrainAgent(NoticeClient(provider, metadata_url, notice_seconds=notice_seconds), target,
                       poll_interval_s=poll_interval, safety_margin_s=safety_margin, log=_say)
    _say(f"polling {provider} interruption notices at {metadata_url} every {poll_interval:g} s for replica "
         f"{replica} (engine pid {engine.pid}, --shutdown-timeout {configured if configured is not None else 'default'})")
    stop = threading.Event()
    try:
        report = agent.run(stop, max_seconds=max_seconds)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        agent.client.close()
    if report is None:
        _say(f"no interruption notice within {max_seconds:g} s")
        return
    r = report.as_dict()
    _say(f"drained {replica}: drain_seconds {r['drain_seconds']}, stopped {r['stop_seconds']} s after SIGTERM, "
         f"{r['seconds_left_at_exit']} s before the notice ran out; killed {str(r['killed']).lower()}")
    sys.stdout.write(json.dumps(r) + "\n")
    if report.killed or not report.drained_clean:
        raise typer.Exit(EXIT_NOT_OK)


@app.command("metadata-endpoint")
@_guarded
def metadata_endpoint_cmd(
    port: Annotated[int, typer.Option("--port", help="port on 127.0.0.1 (0 = any free one; the first line names it)")] = 0,
    max_seconds: Annotated[Optional[float], typer.Option("--max-seconds", help="stop after this long (default: until Ctrl-C)")] = None,
) -> None:
    """Serve AWS IMDSv2 spot/instance-action and GCP instance/preempted on 127.0.0.1 for a game day; post a notice
    with `curl -X POST URL/_forge/notice -d '{"provider": "aws", "notice_seconds": 120}'` (DELETE clears it)."""
    from forge.chaos.spot import MetadataEndpoint

    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: use 0-65535 (0 = any free port)")
    try:
        endpoint = MetadataEndpoint(port=port).start()
    except OSError as exc:
        raise InputError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}) — pick another port "
                         "or 0") from None
    _say(f"metadata endpoint on {endpoint.url} (AWS IMDSv2 and GCP paths; POST/DELETE {endpoint.url}/_forge/notice)")
    try:
        deadline = time.monotonic() + max_seconds if max_seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        endpoint.stop()


@app.command("collective-drill")
@_guarded
def collective_drill_cmd(
    ranks: Annotated[int, typer.Option("--ranks", help="ranks of the all-reduce loop, one process each")] = 2,
    stall_seconds: Annotated[float, typer.Option("--stall-seconds", help="the watchdog's stall threshold")] = 10.0,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="seconds between scrapes of the ranks")] = 0.5,
    backend: Annotated[str, typer.Option("--backend", help="auto (nccl with one GPU per rank, else gloo), gloo, nccl")] = "auto",
    torch_timeout_seconds: Annotated[float, typer.Option("--torch-timeout-seconds", help="the process group's timeout=")] = 60.0,
    stop_rank: Annotated[Optional[int], typer.Option("--stop-rank", help="rank to SIGSTOP (default: the last)")] = None,
    worker_python: Annotated[Optional[str], typer.Option("--worker-python", help="interpreter with torch for the ranks (default: this one)")] = None,
    journal: Annotated[Path, typer.Option("--journal", help="where to write the journal")] = Path("collective-hang-journal.json"),
) -> None:
    """Collective hang: N ranks all-reduce (torch.distributed), one is SIGSTOPped; time Forge's progress watchdog and
    torch's own timeout (forge.chaos.collective). Every rank is killed at the end."""
    from forge.chaos.collective import run_drill, summary

    try:
        result = run_drill(ranks, stall_seconds, poll_interval, backend, torch_timeout_seconds, stop_rank,
                           worker_python, journal, _say)
    except KeyboardInterrupt:
        _err(f"interrupted: ranks killed, journal written to {journal}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _say(summary(result))
    _say(f"journal: {journal}")
    raise typer.Exit(EXIT_OK if result.status == "completed" and not result.deviated else EXIT_NOT_OK)


# `forge chaos rollout`: options and body live with the controller (forge.chaos.rollout keeps its imports light).
from forge.chaos.rollout import rollout_command  # noqa: E402

app.command("rollout")(_guarded(rollout_command))
