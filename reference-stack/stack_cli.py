"""`forge stack up | status | down | logs | gateway`: the reference stack as local processes (stack.py).

Merged into `forge stack` (reference-stack/cli.py) by `app.registered_commands += stack_cli.app.registered_commands`
plus `app.add_typer(stack_cli.gateway_app, name="gateway")`. Exit codes: 0 success / healthy, 1 failed / not
healthy, 2 bad input or a missing prerequisite (port taken, package missing, no engine venv).
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from forge.console import error as _err

from forge.reference_stack import stack

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(help="The reference stack: engines behind HAProxy, Prometheus, Alertmanager, all local.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
gateway_app = typer.Typer(help="HAProxy's runtime API: drain, ready, weight.", no_args_is_help=True)
app.add_typer(gateway_app, name="gateway")

StateDir = Annotated[Path, typer.Option("--state-dir", help="State, configs and logs of the stack.")]


class Engine(str, Enum):
    sim = "sim"
    vllm = "vllm"


class Format(str, Enum):
    table = "table"
    json = "json"


@app.command("up")
def up_cmd(
    engine: Annotated[Engine, typer.Option("--engine", help="sim (simulator, seconds) or vllm (real vLLM on CPU, "
                                           "about a minute; needs `make vllm` and `forge stack model build`).")]
    = Engine.sim,
    replicas: Annotated[int, typer.Option("--replicas", help="Engine replicas behind HAProxy.")] = 2,
    tp: Annotated[int, typer.Option("--tp", help="Tensor parallel size per vLLM replica.")] = 1,
    state_dir: StateDir = stack.DEFAULT_STATE_DIR,
    model_dir: Annotated[Path, typer.Option("--model-dir", help="The model vLLM serves (--engine vllm).")]
    = stack.DEFAULT_MODEL_DIR,
    rules: Annotated[Optional[list[Path]], typer.Option("--rules", help="Prometheus rule file (repeat; default "
                                                         "alerts/reference-stack-rules.yaml).")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="HAProxy weight per replica, e.g. 90,10.")]
    = None,
    exporter: Annotated[bool, typer.Option("--exporter/--no-exporter", help="Run the Forge exporter.")] = True,
    supervise: Annotated[bool, typer.Option("--supervise", help="Run the replica supervisor: it drains, restarts "
                                            "and puts back a replica whose engine exits, fails /health or hangs "
                                            "(logs/supervisor.log).")] = False,
    stall_seconds: Annotated[float, typer.Option("--stall-seconds", help="--supervise: a replica is hung when "
                                                 "requests run but no token comes out for this long.")] = 30.0,
    engine_port: Annotated[int, typer.Option("--engine-port", help="First engine's port (replica i: +i).")]
    = stack.Ports.engine,
    gateway_port: Annotated[int, typer.Option("--gateway-port")] = stack.Ports.gateway,
    haproxy_stats_port: Annotated[int, typer.Option("--haproxy-stats-port")] = stack.Ports.haproxy_stats,
    exporter_port: Annotated[int, typer.Option("--exporter-port")] = stack.Ports.exporter,
    prometheus_port: Annotated[int, typer.Option("--prometheus-port")] = stack.Ports.prometheus,
    alertmanager_port: Annotated[int, typer.Option("--alertmanager-port")] = stack.Ports.alertmanager,
    receiver_port: Annotated[int, typer.Option("--receiver-port")] = stack.Ports.receiver,
) -> None:
    """Start the stack (idempotent) and wait until every component is healthy; on failure nothing is left."""
    try:
        weight_list = [int(w) for w in weights.split(",")] if weights else None
    except ValueError:
        _err(f"--weights {weights!r}: write integers separated by commas, e.g. 90,10")
        raise typer.Exit(EXIT_BAD_INPUT)
    plan = stack.StackPlan(
        state_dir=state_dir, engine=engine.value, replicas=replicas, tp=tp, model_dir=model_dir,
        rule_files=list(rules) if rules else [stack.DEFAULT_RULES], exporter=exporter, weights=weight_list,
        supervise=supervise, stall_seconds=stall_seconds,
        ports=stack.Ports(engine=engine_port, gateway=gateway_port, haproxy_stats=haproxy_stats_port,
                          exporter=exporter_port, prometheus=prometheus_port, alertmanager=alertmanager_port,
                          receiver=receiver_port))
    try:
        state = stack.up(plan, progress=lambda m: sys.stderr.write(f"forge stack: {m}\n"))
    except stack.StackInputError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT)
    except stack.StackError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_FAILED)
    except KeyboardInterrupt:  # up() already stopped what it started
        raise typer.Exit(EXIT_FAILED)
    ready = f" in {state.ready_seconds:.1f} s" if state.ready_seconds is not None else ""
    typer.echo(f"stack up{ready}: gateway {state.gateway_url}, Prometheus {state.prometheus_url}, "
               f"Alertmanager {state.alertmanager_url}, alerts -> {state.receiver_file}")
    for note in state.notes:
        typer.echo(f"note: {note}")


@app.command("status")
def status_cmd(
    state_dir: StateDir = stack.DEFAULT_STATE_DIR,
    format: Annotated[Format, typer.Option("--format", "-f", help="table or json")] = Format.table,
) -> None:
    """Each component: pid, port, alive, health, URL; HAProxy's view of each replica. Exit 1 unless all healthy."""
    try:
        report = stack.status(state_dir)
    except stack.StackInputError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT)
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_status(report)
    raise typer.Exit(EXIT_OK if report["healthy"] else EXIT_FAILED)


def _print_status(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not report["components"]:
        console.print(f"no stack in {report['state_dir']} — start one with `forge stack up`")
        return
    table = Table(title=f"forge stack — {report['state_dir']}")
    for column in ("component", "pid", "port", "process", "health", "url"):
        table.add_column(column)
    for r in report["components"]:
        process = "[green]running[/green]" if r["alive"] else "[red]gone[/red]"
        if not r["url"]:  # no HTTP endpoint (the supervisor): its process is its health
            health = "[green]n/a[/green]" if r["healthy"] else "[red]n/a[/red]"
        else:
            health = "[green]200[/green]" if r["healthy"] else f"[red]{r['health'] or 'no answer'}[/red]"
        table.add_row(r["name"], str(r["pid"]), str(r["port"] or "-"), process, health, r["url"] or r["log"])
    console.print(table)
    if report["servers"]:
        console.print("HAProxy: " + ", ".join(f"{s['name']} {s['status']} (weight {s['weight']})"
                                              for s in report["servers"]))
    for note in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"alert notifications: {report['receiver_file']}")


@app.command("down")
def down_cmd(state_dir: StateDir = stack.DEFAULT_STATE_DIR) -> None:
    """Stop every process of the stack (SIGTERM, then SIGKILL per process group). Safe to repeat."""
    try:
        stopped = stack.down(state_dir)
    except stack.StackInputError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT)
    except stack.StackError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_FAILED)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else f"no stack running in {state_dir}")


@app.command("logs")
def logs_cmd(
    component: Annotated[str, typer.Argument(help="engine-s0, haproxy, prometheus, alertmanager, receiver, exporter, "
                                                  "supervisor")],
    state_dir: StateDir = stack.DEFAULT_STATE_DIR,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Then print new lines as they come (like tail -F: "
                                         "survives a restarted replica's new log); ends on Ctrl-C or when the "
                                         "stack is brought down.")] = False,
) -> None:
    """The last lines of a component's log; with --follow, every new line too."""
    log = Path(state_dir) / "logs" / f"{component}.log"
    if lines < 0:
        _err(f"--lines {lines}: use 0 or more")
        raise typer.Exit(EXIT_BAD_INPUT)
    if not log.is_file():
        known = sorted(p.stem for p in (Path(state_dir) / "logs").glob("*.log"))
        _err(f"{component}: no such component log in {state_dir}/logs — use one of: "
             f"{', '.join(known) or '(none: start the stack with `forge stack up`)'}")
        raise typer.Exit(EXIT_BAD_INPUT)
    if not follow:
        typer.echo(stack.log_tail(log, lines))
        return
    running = stack.stack_started_at(Path(state_dir)) is not None
    try:
        for line in stack.follow_log(log, Path(state_dir), lines):
            sys.stdout.write(line + "\n")
            sys.stdout.flush()  # a pipe (| grep) sees each line as it comes
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_OK)
    except BrokenPipeError:  # `| head`: the reader is gone
        raise typer.Exit(EXIT_OK)
    if running:
        typer.echo(f"forge stack: the stack in {state_dir} was brought down — stopped following {component}",
                   err=True)
    else:
        typer.echo(f"forge stack: no stack running in {state_dir} — nothing to follow", err=True)


def _gateway(state_dir: Path) -> stack.Gateway:
    state = stack.StackState.load(state_dir)
    if state is None or not state.haproxy_socket.exists():
        _err(f"no running stack in {state_dir} — start one with `forge stack up`")
        raise typer.Exit(EXIT_BAD_INPUT)
    return stack.Gateway(state)


@gateway_app.command("set")
def gateway_set_cmd(
    server: Annotated[str, typer.Argument(help="Replica as HAProxy names it: s0, s1, ...")],
    state: Annotated[Optional[str], typer.Option("--state", help="ready, drain or maint")] = None,
    weight: Annotated[Optional[int], typer.Option("--weight", help="0-256 (canary share)")] = None,
    state_dir: StateDir = stack.DEFAULT_STATE_DIR,
) -> None:
    """Drain a replica, bring it back, or change its weight (HAProxy runtime API)."""
    if state is None and weight is None:
        _err("give --state ready|drain|maint and/or --weight N")
        raise typer.Exit(EXIT_BAD_INPUT)
    gateway = _gateway(state_dir)
    try:
        if state is not None:
            gateway.set_state(server, state)
        if weight is not None:
            gateway.set_weight(server, weight)
    except stack.StackInputError as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT)
    except (stack.StackError, OSError) as exc:
        _err(str(exc))
        raise typer.Exit(EXIT_FAILED)
    for s in gateway.servers():
        typer.echo(f"{s['name']}: {s['status']} weight {s['weight']}")


@app.command("k8s")
def k8s_cmd(
    deploy: Annotated[Path, typer.Option("--deploy", "-d", help="deploy.yaml to render.")] = Path(
        "reference-stack/deploy.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the manifests (kustomize layout).")] = Path(
        "reference-stack/k8s"),
    namespace: Annotated[Optional[str], typer.Option("--namespace", help="Default: the deployment's name.")] = None,
    prometheus_url: Annotated[Optional[str], typer.Option("--prometheus-url", help="Prometheus the canary "
                                                          "analysis queries.")] = None,
) -> None:
    """Kubernetes manifests for a deploy.yaml (Argo Rollout, HPA, PDB, ServiceMonitor, PrometheusRule, ...);
    apply with `kubectl apply -k OUT` (reference-stack/k8s/README.md)."""
    from forge.errors import InputError
    from forge.reference_stack import k8s

    options = k8s.Options(namespace=namespace, prometheus_url=prometheus_url or k8s.DEFAULT_PROMETHEUS_URL)
    try:
        written = k8s.write(k8s.render(deploy, options), out)
    except InputError as exc:
        for message in exc.messages:
            _err(message)
        raise typer.Exit(EXIT_BAD_INPUT)
    typer.echo(f"{len(written)} files written to {out} — apply with `kubectl apply -k {out}`")
