"""The reference stack as real local processes: engines behind HAProxy, scraped by Prometheus, alerting through
Alertmanager into Forge's webhook receiver. No containers; every server binds 127.0.0.1.

    plan = StackPlan(state_dir=Path(".forge/stack"), engine="sim", replicas=2)
    state = up(plan)            # starts everything, waits until healthy; on any failure stops what it started
    status(plan.state_dir)      # per component: pid, port, alive, health, URL
    Gateway(state).drain("s1")  # HAProxy runtime API
    down(plan.state_dir)        # stops every process group recorded in the state file

Every process runs in its own session (process group) and is recorded in `<state_dir>/state.json` (pid, start
time, port, log) as soon as it is spawned, so `down` and `status` work from another shell, and `down` also
cleans up after an `up` that died halfway. A pid is only signalled while its start time still matches, so a
recycled pid is never killed.

With `StackPlan(supervise=True)` the replica supervisor (forge.chaos.supervisor) runs as one more component; it
restarts failed engines and records each new process here (`StackState.replace_component`), and `down` stops it
before the rest. vLLM replicas each get their own cores (vllm_engine.cpu_binding), recorded per engine (`env`).
`follow_log` is `forge stack logs --follow`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from forge.reference_stack.vllm_engine import (EngineConfig, cpu_binding, missing_vllm_message, port_is_free,
                                               vllm_python)

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_TEMPLATES = PACKAGE_DIR / "configs"
DEPLOY_FILE = PACKAGE_DIR / "deploy.yaml"
# The rules generated from the reference deploy.yaml (`make alerts-build`); a checkout has them next to us.
DEFAULT_RULES = PACKAGE_DIR.parent / "alerts" / "reference-stack-rules.yaml"
DEFAULT_STATE_DIR = Path(".forge/stack")
DEFAULT_MODEL_DIR = Path(".forge/models/tiny-llama")
HOST = "127.0.0.1"
BACKEND = "engines"
STATE_FILE = "state.json"
RECEIVER_FILE = "alerts.jsonl"

SIM_STARTUP_TIMEOUT_S = 30.0
VLLM_STARTUP_TIMEOUT_S = 300.0   # measured 56-110 s per engine on 2 cores (../shared/notes/vllm-cpu.md)
SERVICE_STARTUP_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0              # SIGTERM, then SIGKILL the group after this (vLLM: 30 s, it drains workers)
VLLM_STOP_GRACE_S = 30.0
KILL_WAIT_S = 10.0
POLL_S = 0.2
HTTP_TIMEOUT_S = 2.0
# Never route loopback requests through an HTTP(S)_PROXY from the environment.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))

APT_PACKAGES = {"haproxy": "haproxy", "prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}


class StackError(RuntimeError):
    """The stack could not be started; the message names the component and carries its log tail."""


class StackInputError(StackError):
    """Bad input or a missing prerequisite (port taken, package missing): exit 2."""


@dataclass
class Ports:
    engine: int = 18001          # first engine; replica i listens on engine + i
    gateway: int = 18080
    haproxy_stats: int = 18404
    exporter: int = 19400
    prometheus: int = 19090
    alertmanager: int = 19093
    receiver: int = 19095

    def engine_port(self, index: int) -> int:
        return self.engine + index

    @classmethod
    def free(cls, replicas: int) -> "Ports":
        """Ports the OS reports free right now (tests, parallel stacks): `replicas` consecutive ones for the
        engines, one each for the other components. Another process may still take one before `up` binds it."""

        def any_free_port() -> int:
            with socket.socket() as s:
                s.bind((HOST, 0))
                return s.getsockname()[1]

        for _ in range(50):
            first = any_free_port()
            if all(port_is_free(HOST, first + i) for i in range(replicas)):
                break
        taken = set(range(first, first + replicas))
        others: list[int] = []
        while len(others) < 6:
            port = any_free_port()
            if port not in taken:
                taken.add(port)
                others.append(port)
        gateway, stats, exporter, prometheus, alertmanager, receiver = others
        return cls(engine=first, gateway=gateway, haproxy_stats=stats, exporter=exporter, prometheus=prometheus,
                   alertmanager=alertmanager, receiver=receiver)


@dataclass
class StackPlan:
    state_dir: Path = DEFAULT_STATE_DIR
    engine: str = "sim"                      # "sim" or "vllm"
    replicas: int = 2
    tp: int = 1
    ports: Ports = field(default_factory=Ports)
    model_dir: Path = DEFAULT_MODEL_DIR      # --engine vllm
    rule_files: list[Path] = field(default_factory=lambda: [DEFAULT_RULES])
    exporter: bool = True                    # run the Forge exporter when it is installed and works
    scrape_interval_s: int = 5
    evaluation_interval_s: int = 5
    check_interval_ms: int = 1000            # HAProxy active health checks
    check_fall: int = 2
    check_rise: int = 2
    weights: list[int] | None = None         # per replica (HAProxy weight, 0-256); default 100 each
    sim_args: list[str] = field(default_factory=list)   # extra simulator flags, e.g. ["--max-num-seqs", "8"]
    vllm_args: list[str] = field(default_factory=list)  # extra vLLM flags, e.g. ["--enforce-eager"] (faster start)
    # leastconn spreads long LLM streams evenly; roundrobin follows the weights exactly (a canary's traffic share).
    balance: str = "leastconn"
    # vLLM's --shutdown-timeout (the simulator's --shutdown-timeout-s): on SIGTERM in-flight requests get this
    # long to finish; None = the engine's default (0: cut at once). A spot drain sizes it to fit the notice.
    shutdown_timeout_s: int | None = None
    # --supervise: run the replica supervisor (forge.chaos.supervisor) as a stack component: it restarts engines
    # that exit, fail /health, or that its progress watchdog finds hung for stall_seconds.
    supervise: bool = False
    stall_seconds: float = 30.0

    def check(self) -> None:
        problems = []
        if self.engine not in ("sim", "vllm"):
            problems.append(f"--engine {self.engine!r}: use sim or vllm")
        if not 1 <= self.replicas <= 64:
            problems.append(f"--replicas {self.replicas}: use 1 to 64")
        if not 1 <= self.tp <= 8:
            problems.append(f"--tp {self.tp}: use 1 to 8")
        if not 1 <= self.stall_seconds <= 3600:
            problems.append(f"--stall-seconds {self.stall_seconds:g}: use 1 to 3600 (30 is the production default)")
        if self.balance not in ("leastconn", "roundrobin"):
            problems.append(f"--balance {self.balance!r}: use leastconn or roundrobin")
        if self.engine == "sim" and self.tp != 1:
            problems.append("--tp applies to --engine vllm only (the simulator has no tensor parallelism)")
        if self.weights is not None and (len(self.weights) != self.replicas
                                         or not all(0 <= w <= 256 for w in self.weights)):
            problems.append(f"--weights {self.weights}: give one weight (0-256) per replica ({self.replicas})")
        for name, port in asdict(self.ports).items():
            if not 1 <= port <= 65535 or (name == "engine" and port + self.replicas - 1 > 65535):
                problems.append(f"--{name.replace('_', '-')}-port {port}: use 1-65535")
        ports = self.all_ports()
        if len(set(ports.values())) != len(ports):
            problems.append(f"ports overlap: {ports} — give each component its own port")
        for path in self.rule_files:
            if not Path(path).is_file():
                problems.append(f"{path}: rule file not found — run `make alerts-build` or pass --rules FILE")
        if problems:
            raise StackInputError("; ".join(problems))

    def replica_names(self) -> list[str]:
        return [f"s{i}" for i in range(self.replicas)]

    def all_ports(self) -> dict[str, int]:
        ports = {f"engine-{name}": self.ports.engine_port(i) for i, name in enumerate(self.replica_names())}
        ports.update(gateway=self.ports.gateway, **{"haproxy-stats": self.ports.haproxy_stats},
                     prometheus=self.ports.prometheus, alertmanager=self.ports.alertmanager,
                     receiver=self.ports.receiver)
        if self.exporter:
            ports["exporter"] = self.ports.exporter
        return ports

    def summary(self) -> dict:
        """What makes two `up`s the same stack (for idempotence)."""
        summary = {"engine": self.engine, "replicas": self.replicas, "tp": self.tp, "ports": asdict(self.ports)}
        if self.supervise:
            summary["supervise"] = {"stall_seconds": self.stall_seconds}
        return summary


# ------------------------------------------------------------------------------------------- processes
def _proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_after_comm = stat[stat.rindex(")") + 2:].split()
    if fields_after_comm[0] == "Z":
        return None
    return int(fields_after_comm[19])


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of group `pgid`."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split(" ", 3)[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat_file.parent.name))
    return members


@dataclass
class Component:
    name: str                    # "engine-s0", "haproxy", "prometheus", ...
    kind: str                    # engine | exporter | receiver | alertmanager | prometheus | haproxy
    pid: int
    start_time: int | None       # /proc start time: guards against signalling a recycled pid
    port: int
    url: str
    health_url: str
    log: str
    command: list[str]
    stop_grace_s: float = STOP_GRACE_S
    # What the stack set on top of the inherited environment (vLLM: offline hub, KV size, its cores); a restart
    # reuses it. Never the whole environment: that may hold secrets.
    env: dict[str, str] | None = None

    def leader_alive(self) -> bool:
        return self.start_time is not None and _proc_start_time(self.pid) == self.start_time

    def group_alive(self) -> bool:
        # Our processes lead their own session: pgid == pid. Members outlive a dead leader (vLLM workers).
        return bool(_group_members(self.pid)) if self.owns_group() else False

    def owns_group(self) -> bool:
        """Whether group `pid` is still ours: the leader is, or the leader is gone and members remain."""
        if self.leader_alive():
            return True
        return _proc_start_time(self.pid) is None  # pid not reused by someone else: orphans may remain

    def signal_group(self, sig: int) -> None:
        if not self.owns_group():
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _spawn(name: str, kind: str, command: list[str], port: int, url: str, health_url: str, logs: Path,
           env: dict[str, str] | None = None, stop_grace_s: float = STOP_GRACE_S,
           env_overrides: dict[str, str] | None = None, processes: dict | None = None) -> Component:
    """Start one process in its own session, its output appended to logs/NAME.log. env: the whole environment
    (None: inherit); env_overrides: set on top of it and recorded in the Component. processes: where the caller
    keeps the Popen by pid, to reap the child when it exits (a long-running parent such as the supervisor)."""
    log_path = logs / f"{name}.log"
    if env_overrides:
        env = {**(os.environ if env is None else env), **env_overrides}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, env=env, cwd=str(logs.parent))
    if processes is not None:
        processes[process.pid] = process
    return Component(name=name, kind=kind, pid=process.pid, start_time=_proc_start_time(process.pid), port=port,
                     url=url, health_url=health_url, log=str(log_path), command=command, stop_grace_s=stop_grace_s,
                     env=dict(env_overrides) if env_overrides else None)


def http_status(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> int | None:
    try:
        with LOOPBACK.open(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def http_json(url: str, timeout_s: float = HTTP_TIMEOUT_S, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with LOOPBACK.open(request, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def log_tail(path: str | Path, lines: int = 30) -> str:
    try:
        all_lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(all_lines[-lines:] if lines > 0 else [])
    except FileNotFoundError:
        return ""


FOLLOW_POLL_S = 0.2


def stack_started_at(state_dir: Path) -> float | None:
    """started_at of the stack whose state file is in `state_dir`; None when there is none (brought down)."""
    try:
        return json.loads((Path(state_dir) / STATE_FILE).read_text())["started_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def follow_log(path: str | Path, state_dir: Path, lines: int = 50, poll_s: float = FOLLOW_POLL_S):
    """Yield the last `lines` lines of a log, then each line written to it, like `tail -F`: a log recreated (a new
    file under the same name) or truncated is read again from its start. Ends, after yielding what the file still
    held, once the stack in `state_dir` is brought down: its state file is gone or belongs to a newer stack."""
    path = Path(path)
    started_at = stack_started_at(state_dir)
    handle = None
    identity = None
    pending = b""

    def reopen():
        nonlocal handle, identity
        if handle is not None:
            handle.close()
            handle = None
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            identity = None
            return
        stat = os.fstat(handle.fileno())
        identity = (stat.st_dev, stat.st_ino)

    reopen()
    if handle is not None:  # the tail, from the same open file: no line written meanwhile is skipped
        *complete, pending = handle.read().split(b"\n")
        for raw in complete[-lines:] if lines > 0 else []:
            yield raw.decode("utf-8", errors="replace")
    try:
        while True:
            stack_gone = started_at is None or stack_started_at(state_dir) != started_at
            while handle is not None and (chunk := handle.read(65536)):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", errors="replace")
            if stack_gone:
                break
            try:
                stat = path.stat()
            except FileNotFoundError:
                stat = None
            if stat is not None and ((stat.st_dev, stat.st_ino) != identity
                                     or (handle is not None and stat.st_size < handle.tell())):
                if pending:  # the old file's unfinished last line
                    yield pending.decode("utf-8", errors="replace")
                    pending = b""
                reopen()  # recreated (a replica restarted by a tool that rewrites its log) or truncated
                continue
            time.sleep(poll_s)
        if pending:
            yield pending.decode("utf-8", errors="replace")
    finally:
        if handle is not None:
            handle.close()


# ------------------------------------------------------------------------------------------- state file
@dataclass
class StackState:
    state_dir: Path
    plan: dict
    started_at: float
    components: list[Component] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ready_seconds: float | None = None

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def engines(self) -> list[Component]:
        return [c for c in self.components if c.kind == "engine"]

    def replace_component(self, new: Component) -> None:
        """Put a restarted component in place of the one of the same name and save the state file. Re-reads the
        file first, so what another process recorded meanwhile is kept (the supervisor restarts engines from its
        own process)."""
        on_disk = StackState.load(self.state_dir)
        if on_disk is not None:
            self.components, self.notes, self.ready_seconds = on_disk.components, on_disk.notes, on_disk.ready_seconds
        self.components = [new if c.name == new.name else c for c in self.components]
        if new.name not in [c.name for c in self.components]:
            self.components.append(new)
        self.save()

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.plan['ports']['gateway']}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{HOST}:{self.plan['ports']['prometheus']}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{HOST}:{self.plan['ports']['alertmanager']}"

    @property
    def receiver_file(self) -> Path:
        return self.state_dir / RECEIVER_FILE

    @property
    def haproxy_socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    def save(self) -> None:
        data = {"state_dir": str(self.state_dir), "plan": self.plan, "started_at": self.started_at,
                "ready_seconds": self.ready_seconds, "notes": self.notes,
                "components": [asdict(c) for c in self.components]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)  # atomic: another shell never reads half a file

    @classmethod
    def load(cls, state_dir: Path) -> "StackState | None":
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StackInputError(f"{path}: not a stack state file ({exc}) — remove it after checking no "
                                  f"stack process is left") from None
        return cls(state_dir=Path(state_dir), plan=data["plan"], started_at=data["started_at"],
                   components=[Component(**c) for c in data["components"]], notes=data.get("notes", []),
                   ready_seconds=data.get("ready_seconds"))


# ------------------------------------------------------------------------------------------- prerequisites
def find_binaries() -> dict[str, str]:
    """Paths of haproxy, prometheus, alertmanager; StackInputError naming the missing packages and the fix."""
    found = {"haproxy": shutil.which("haproxy"), "prometheus": shutil.which("prometheus"),
             "alertmanager": shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")}
    missing = [APT_PACKAGES[name] for name, path in found.items() if path is None]
    if missing:
        raise StackInputError(f"not installed: {', '.join(missing)} — run `make stack-deps` "
                              f"(or `sudo apt-get install {' '.join(missing)}`)")
    return found  # type: ignore[return-value]


def exporter_available() -> str | None:
    """None when the Forge exporter can run here, else why not (shown as a note in `forge stack status`)."""
    try:
        import forge.exporters.cli as exporter_cli  # noqa: F401
        import forge.exporters.server  # noqa: F401
    except Exception as exc:  # any import failure means: not usable in this checkout
        return f"Forge exporter not available ({type(exc).__name__}: {exc}); engines scraped directly only"
    return None


def _check_ports_free(plan: StackPlan) -> None:
    taken = [f"{name} {HOST}:{port}" for name, port in plan.all_ports().items() if not port_is_free(HOST, port)]
    if taken:
        raise StackInputError(f"port already in use: {', '.join(taken)} — stop what holds it or choose other "
                              f"ports (`forge stack up --help` lists the --*-port options)")


# ------------------------------------------------------------------------------------------- rendering
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(str(CONFIG_TEMPLATES)), undefined=StrictUndefined,
                       keep_trailing_newline=True)


def render_configs(plan: StackPlan, state_dir: Path, with_exporter: bool) -> dict[str, Path]:
    """Write haproxy.cfg, prometheus.yml, alertmanager.yml (and exporter.yaml) under the state dir."""
    env = _templates()
    p = plan.ports
    names = plan.replica_names()
    weights = plan.weights or [100] * plan.replicas
    engines = [{"name": n, "port": p.engine_port(i), "address": f"{HOST}:{p.engine_port(i)}", "weight": weights[i],
                "metrics_url": f"http://{HOST}:{p.engine_port(i)}/metrics"} for i, n in enumerate(names)]
    files = {
        "haproxy": ("haproxy.cfg", env.get_template("haproxy.cfg.j2").render(
            host=HOST, socket=str((state_dir / "haproxy.sock").resolve()), gateway_port=p.gateway,
            stats_port=p.haproxy_stats, backend=BACKEND, servers=engines, balance=plan.balance,
            check_interval_ms=plan.check_interval_ms,
            fall=plan.check_fall, rise=plan.check_rise)),
        "prometheus": ("prometheus.yml", env.get_template("prometheus.yml.j2").render(
            scrape_interval=f"{plan.scrape_interval_s}s",
            scrape_timeout=f"{max(1, plan.scrape_interval_s - 1)}s",
            evaluation_interval=f"{plan.evaluation_interval_s}s", stack_name=str(state_dir.resolve()),
            rule_files=[str(Path(r).resolve()) for r in plan.rule_files],
            alertmanager=f"{HOST}:{p.alertmanager}", engines=engines,
            exporter=f"{HOST}:{p.exporter}" if with_exporter else None, haproxy=f"{HOST}:{p.haproxy_stats}",
            prometheus=f"{HOST}:{p.prometheus}", simulated_gpus=plan.engine == "sim")),
        "alertmanager": ("alertmanager.yml", env.get_template("alertmanager.yml.j2").render(
            group_wait="1s", group_interval="5s", repeat_interval="1h",
            receiver_url=f"http://{HOST}:{p.receiver}/alerts")),
    }
    if with_exporter:
        files["exporter"] = ("exporter.yaml", env.get_template("exporter.yaml.j2").render(
            listen=f"{HOST}:{p.exporter}", interval_seconds=plan.scrape_interval_s,
            timeout_seconds=max(1, plan.scrape_interval_s - 1), deploy=str(DEPLOY_FILE), engines=engines))
    written = {}
    for key, (filename, text) in files.items():
        path = state_dir / filename
        path.write_text(text)
        written[key] = path
    return written


# ------------------------------------------------------------------------------------------- up / down
def _wait_healthy(components: list[Component], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(components)
    while pending:
        for c in list(pending):
            if not c.leader_alive():
                raise StackError(f"{c.name} exited during start-up; log {c.log}:\n{log_tail(c.log)}")
            if http_status(c.health_url) == 200:
                pending.remove(c)
        if pending and time.monotonic() >= deadline:
            c = pending[0]
            raise StackError(f"{c.name} not healthy at {c.health_url} after {timeout_s:.0f} s; log {c.log}:\n"
                             f"{log_tail(c.log)}")
        if pending:
            time.sleep(POLL_S)


def up(plan: StackPlan, progress=lambda message: None) -> StackState:
    """Start the stack and wait until every component is healthy. Idempotent: a running stack with the same
    plan is returned as is. On any failure, everything started is stopped before the error propagates."""
    plan.check()
    state_dir = Path(plan.state_dir)
    existing = StackState.load(state_dir)
    if existing is not None:
        alive = [c for c in existing.components if c.leader_alive()]
        if alive and len(alive) == len(existing.components) and existing.plan == plan.summary():
            progress(f"stack already up in {state_dir}")
            return existing
        if alive:
            if existing.plan != plan.summary():
                raise StackInputError(f"{state_dir}: a stack with other settings is running "
                                      f"({existing.plan['engine']} x{existing.plan['replicas']}) — run "
                                      f"`forge stack down --state-dir {state_dir}` first")
            progress(f"{len(existing.components) - len(alive)} component(s) of the old stack are gone; restarting")
        down(state_dir)  # a half-dead stack: clear it, then start fresh
    binaries = find_binaries()
    if plan.engine == "vllm":
        python = vllm_python()
        if not python.exists():
            raise StackInputError(missing_vllm_message(python))
        if not (Path(plan.model_dir) / "config.json").is_file():
            raise StackInputError(f"{plan.model_dir}: no model — run `forge stack model build --out {plan.model_dir}`")
    _check_ports_free(plan)

    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    for data_dir in ("prometheus-data", "alertmanager-data"):
        shutil.rmtree(state_dir / data_dir, ignore_errors=True)  # a fresh stack starts with no history
        (state_dir / data_dir).mkdir()
    started = time.monotonic()
    state = StackState(state_dir=state_dir, plan=plan.summary(), started_at=time.time())
    exporter_note = exporter_available() if plan.exporter else "Forge exporter disabled (--no-exporter)"
    if exporter_note:
        state.notes.append(exporter_note)
    with_exporter = exporter_note is None
    configs = render_configs(plan, state_dir, with_exporter)
    with _stopped_on_failure(state, progress, "start-up failed: stopping what was started"):
        _start_all(plan, state, configs, binaries, logs, with_exporter, progress)
    state.ready_seconds = round(time.monotonic() - started, 2)
    state.save()
    if plan.supervise:
        with _stopped_on_failure(state, progress, "the supervisor failed to start: stopping the stack"):
            _start_supervisor(plan, state, logs, progress)
    return state


@contextlib.contextmanager
def _stopped_on_failure(state: StackState, progress, message: str):
    """Nothing is left running when a start-up step fails (or is interrupted): stop every component, record it."""
    try:
        yield
    except BaseException:
        progress(message)
        _stop_components(state.components)
        state.components.clear()
        state.save()
        raise


SUPERVISOR_MODULE = "forge.chaos.supervisor"
SUPERVISOR_READY_LINE = "supervisor: watching"   # what the supervisor logs once it watches every engine


def _start_supervisor(plan: StackPlan, state: StackState, logs: Path, progress) -> Component:
    """The replica supervisor as a stack component: its own process, logging to logs/supervisor.log, started once
    every replica is UP (it would restart engines that are merely starting) and stopped first by `down`."""
    progress("starting the replica supervisor")
    command = [sys.executable, "-m", SUPERVISOR_MODULE, "--state-dir", str(state.state_dir.resolve()),
               "--stall-seconds", f"{plan.stall_seconds:g}"]
    supervisor = _spawn("supervisor", "supervisor", command, 0, "", "", logs=logs,
                        env_overrides={"PYTHONUNBUFFERED": "1"})
    state.components.append(supervisor)
    state.save()
    deadline = time.monotonic() + SERVICE_STARTUP_TIMEOUT_S
    while SUPERVISOR_READY_LINE not in log_tail(supervisor.log, 200):
        if not supervisor.leader_alive():
            raise StackError(f"supervisor exited during start-up; log {supervisor.log}:\n{log_tail(supervisor.log)}")
        if time.monotonic() >= deadline:
            raise StackError(f"supervisor not watching after {SERVICE_STARTUP_TIMEOUT_S:.0f} s; log "
                             f"{supervisor.log}:\n{log_tail(supervisor.log)}")
        time.sleep(POLL_S)
    return supervisor


def _start_all(plan: StackPlan, state: StackState, configs: dict[str, Path], binaries: dict[str, str],
               logs: Path, with_exporter: bool, progress) -> None:
    p = plan.ports

    def spawn(*args, **kwargs) -> Component:
        component = _spawn(*args, logs=logs, **kwargs)
        state.components.append(component)
        state.save()  # recorded before anything waits on it: `down` from another shell can always find it
        return component

    progress(f"starting {plan.replicas} {plan.engine} engine(s)")
    engines = []
    if plan.engine == "vllm":
        binding = cpu_binding(plan.replicas, plan.tp)
        if binding.warning:
            progress(f"warning: {binding.warning}")
            state.notes.append(binding.warning)
    for i, name in enumerate(plan.replica_names()):
        port = p.engine_port(i)
        base = f"http://{HOST}:{port}"
        if plan.engine == "sim":
            command = [sys.executable, "-m", "forge.reference_stack.simulator", "--host", HOST, "--port", str(port),
                       *plan.sim_args]
            if plan.shutdown_timeout_s is not None:
                command += ["--shutdown-timeout-s", str(plan.shutdown_timeout_s)]
            engines.append(spawn(f"engine-{name}", "engine", command, port, base, f"{base}/health"))
        else:
            # Each replica on its own cores (VLLM_CPU_OMP_THREADS_BIND): with vLLM's "auto", every replica binds
            # its rank 0 to the same first core.
            config = EngineConfig(model_dir=Path(plan.model_dir).resolve(), port=port, host=HOST,
                                  served_model_name="tiny", tensor_parallel_size=plan.tp, kv_cache_space_gib=1,
                                  omp_threads_bind=binding.binds[i], shutdown_timeout_s=plan.shutdown_timeout_s,
                                  extra_args=list(plan.vllm_args))
            engines.append(spawn(f"engine-{name}", "engine", config.command(), port, base, f"{base}/health",
                                 env_overrides=config.env_overrides(), stop_grace_s=VLLM_STOP_GRACE_S))
    # The monitoring side starts while the engines warm up (vLLM takes a minute); they only need the ports.
    services = []
    receiver_env = dict(os.environ, PYTHONUNBUFFERED="1")
    services.append(spawn("receiver", "receiver", [sys.executable, "-m", "forge.reference_stack.receiver",
                                                   "--host", HOST, "--port", str(p.receiver),
                                                   "--out", str(state.receiver_file.resolve())],
                          p.receiver, f"http://{HOST}:{p.receiver}", f"http://{HOST}:{p.receiver}/health",
                          env=receiver_env))
    services.append(spawn("alertmanager", "alertmanager", [
        binaries["alertmanager"], f"--config.file={configs['alertmanager'].resolve()}",
        f"--storage.path={(state.state_dir / 'alertmanager-data').resolve()}",
        f"--web.listen-address={HOST}:{p.alertmanager}", "--cluster.listen-address="],
        p.alertmanager, f"http://{HOST}:{p.alertmanager}", f"http://{HOST}:{p.alertmanager}/-/ready"))
    services.append(spawn("prometheus", "prometheus", [
        binaries["prometheus"], f"--config.file={configs['prometheus'].resolve()}",
        f"--storage.tsdb.path={(state.state_dir / 'prometheus-data').resolve()}",
        f"--web.listen-address={HOST}:{p.prometheus}", "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1d"],
        p.prometheus, f"http://{HOST}:{p.prometheus}", f"http://{HOST}:{p.prometheus}/-/ready"))
    services.append(spawn("haproxy", "haproxy", [binaries["haproxy"], "-db", "-f", str(configs["haproxy"].resolve())],
                          p.gateway, f"http://{HOST}:{p.gateway}", f"http://{HOST}:{p.haproxy_stats}/metrics"))
    progress("waiting for receiver, Alertmanager, Prometheus, HAProxy")
    _wait_healthy(services, SERVICE_STARTUP_TIMEOUT_S)
    progress(f"waiting for the engines (/health), up to {_engine_timeout(plan):.0f} s")
    _wait_healthy(engines, _engine_timeout(plan))
    # The exporter starts once the engines answer: started earlier, it reports forge_engine_up 0 through vLLM's
    # minute of start-up and ForgeEngineDown (for: 1m) pages for a stack that is merely starting (seen here).
    if with_exporter:
        forge_cli = [sys.executable, "-c", "import sys; from forge.cli import main; sys.argv[0] = 'forge'; main()"]
        exporter = spawn("exporter", "exporter", [*forge_cli, "exporter", "run", "--config",
                                                  str(configs["exporter"].resolve())],
                         p.exporter, f"http://{HOST}:{p.exporter}", f"http://{HOST}:{p.exporter}/metrics")
        try:
            _wait_healthy([exporter], SERVICE_STARTUP_TIMEOUT_S)
        except StackError as exc:
            # Optional for the stack: note why and go on without it (Prometheus still scrapes the engines
            # directly; the Forge rules then have no data).
            _stop_components([exporter])
            state.components.remove(exporter)
            state.notes.append(f"Forge exporter failed to start, skipped: {str(exc).splitlines()[0]}")
            state.save()
    # Ready means routable: HAProxy has seen `rise` good checks of every replica.
    _wait_gateway_up(state, plan)


def _wait_gateway_up(state: StackState, plan: StackPlan) -> None:
    timeout_s = (plan.check_rise + 2) * plan.check_interval_ms / 1000 + 5
    deadline = time.monotonic() + timeout_s
    gateway = Gateway(state)
    servers: list[dict] = []
    while time.monotonic() < deadline:
        servers = gateway.servers()
        if servers and all(s["status"] == "UP" for s in servers):
            return
        time.sleep(POLL_S)
    raise StackError(f"HAProxy has not marked every replica UP within {timeout_s:.0f} s: "
                     f"{', '.join(s['name'] + ' ' + str(s['status']) for s in servers)}")


def _engine_timeout(plan: StackPlan) -> float:
    return SIM_STARTUP_TIMEOUT_S if plan.engine == "sim" else VLLM_STARTUP_TIMEOUT_S


def _stop_components(components: list[Component]) -> list[str]:
    """SIGTERM every group at once, SIGKILL what is left after its grace, wait until none is alive.
    Returns the names of groups that survived SIGKILL (should be none)."""
    running = [c for c in components if c.group_alive()]
    for c in reversed(running):
        c.signal_group(signal.SIGTERM)
    started = time.monotonic()
    left = list(running)
    while left:
        left = [c for c in left if c.group_alive()]
        overdue = [c for c in left if time.monotonic() - started >= c.stop_grace_s]
        for c in overdue:
            c.signal_group(signal.SIGKILL)
        if overdue and len(overdue) == len(left):
            break
        time.sleep(POLL_S)
    deadline = time.monotonic() + KILL_WAIT_S
    while left and time.monotonic() < deadline:
        left = [c for c in left if c.group_alive()]
        time.sleep(POLL_S)
    return [c.name for c in left]


def down(state_dir: Path) -> list[str]:
    """Stop every process group of the stack in `state_dir`; return the names of those that were running.
    Safe to repeat and with no stack. Raises StackError if a group survives SIGKILL."""
    state = StackState.load(Path(state_dir))
    if state is None:
        return []
    was_running = [c.name for c in state.components if c.group_alive()]
    # The supervisor first: it might restart an engine while we stop it. It records every engine it starts in the
    # state file before waiting on it, so the file read again afterwards names the engines that run now.
    supervisors = [c for c in state.components if c.kind == "supervisor"]
    survivors = _stop_components(supervisors)
    if supervisors:
        state = StackState.load(Path(state_dir)) or state
        was_running += [c.name for c in state.components if c.name not in was_running and c.group_alive()]
    survivors += _stop_components([c for c in state.components if c.kind != "supervisor"])
    if survivors:
        raise StackError(f"still running after SIGKILL: {', '.join(survivors)} — see `ps -g PID`")
    socket_path = state.haproxy_socket
    if socket_path.exists():
        socket_path.unlink()
    state.path.unlink(missing_ok=True)
    return was_running


# ------------------------------------------------------------------------------------------- status
def status(state_dir: Path) -> dict:
    """{"state_dir", "running": bool, "healthy": bool, "components": [...], "notes": [...], "gateway": {...}}."""
    state = StackState.load(Path(state_dir))
    if state is None:
        return {"state_dir": str(state_dir), "running": False, "healthy": False, "components": [], "notes": [],
                "servers": []}
    rows = []
    for c in state.components:
        alive = c.leader_alive()
        # A component with no HTTP endpoint (the supervisor) is healthy while its process runs.
        code = http_status(c.health_url, timeout_s=1.0) if alive and c.health_url else None
        healthy = alive and (code == 200 or not c.health_url)
        rows.append({"name": c.name, "kind": c.kind, "pid": c.pid, "port": c.port, "alive": alive,
                     "health": code, "healthy": healthy, "url": c.url, "log": c.log})
    servers = []
    if state.haproxy_socket.exists():
        try:
            servers = Gateway(state).servers()
        except (OSError, StackError):
            servers = []
    return {"state_dir": str(state_dir), "running": any(r["alive"] for r in rows),
            "healthy": bool(rows) and all(r["healthy"] for r in rows), "plan": state.plan,
            "ready_seconds": state.ready_seconds, "components": rows, "notes": state.notes, "servers": servers,
            "receiver_file": str(state.receiver_file)}


# ------------------------------------------------------------------------------------------- gateway
class Gateway:
    """HAProxy's runtime API on the stack's admin socket: drain, ready, maint, weight, server states."""

    def __init__(self, state: StackState, backend: str = BACKEND):
        self.socket_path = state.haproxy_socket
        self.backend = backend

    def command(self, line: str, timeout_s: float = 2.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks).decode()
        # HAProxy answers a refused command with a one-line message; only that first line is checked, because
        # `show stat` rows legitimately contain words like "invalid" (check_desc "Layer7 invalid response").
        first_line = answer.strip().splitlines()[0] if answer.strip() else ""
        if any(word in first_line for word in ("No such", "Unknown", "Require", "invalid")):
            raise StackError(f"haproxy: `{line}`: {first_line}")
        return answer

    def set_state(self, server: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise StackInputError(f"state {state!r}: use ready, drain or maint")
        self.command(f"set server {self.backend}/{server} state {state}")

    def drain(self, server: str) -> None:
        self.set_state(server, "drain")

    def ready(self, server: str) -> None:
        self.set_state(server, "ready")

    def set_weight(self, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise StackInputError(f"weight {weight}: use 0-256")
        self.command(f"set weight {self.backend}/{server} {weight}")

    def stat_rows(self) -> list[dict[str, str]]:
        """`show stat` rows of the backend's servers, keyed by HAProxy's column names (pxname, svname, status,
        scur, weight, check_status, ...), values as HAProxy prints them."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = []
        for line in lines[1:]:
            values = dict(zip(header, line.split(",")))
            if values.get("pxname") == self.backend and values.get("svname") not in ("FRONTEND", "BACKEND"):
                rows.append(values)
        return rows

    def servers(self) -> list[dict]:
        """Each server of the backend: name, status (UP/DOWN/DRAIN/MAINT, as `show stat`), weight, check."""
        return [{"name": values["svname"], "status": values.get("status"),
                 "weight": int(values.get("weight") or 0), "check": values.get("check_status")}
                for values in self.stat_rows()]

    def wait_server_status(self, server: str, status: str = "UP", timeout_s: float = 20.0) -> float:
        """Wait until HAProxy reports `server` in `status` (UP, DOWN, DRAIN, MAINT); returns the seconds waited."""
        started = time.monotonic()
        seen = None
        while time.monotonic() - started < timeout_s:
            seen = next((s["status"] for s in self.servers() if s["name"] == server), None)
            if seen is not None and seen.split(" ")[0] == status:
                return time.monotonic() - started
            time.sleep(POLL_S / 4)
        raise StackError(f"HAProxy server {server}: {seen} after {timeout_s:g} s, expected {status}")
