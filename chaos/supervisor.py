"""The replica supervisor: a failed replica is taken out of the gateway, restarted, and put back once healthy.

    supervisor = Supervisor(lab.replicas, lab.gateway, receiver_file=lab.stack.receiver_file).start()
    supervisor.report_hung("replica-1", "2 requests running, tokens frozen for 30 s")   # the progress watchdog
    supervisor.stop()

One implementation, two uses: in-process in a chaos game day (the runner's `StackReplica`s, configuration.supervisor;
the lab's watchdog calls `report_hung`), and long-running as a component of the reference stack
(`forge stack up --supervise` starts `python -m forge.chaos.supervisor --state-dir DIR`: `StackEngine`s restarted
from the stack's state file, its own progress watchdog, logging to logs/supervisor.log, stopped first by
`forge stack down`). A replica is anything with the `SupervisedReplica.replica` attributes listed there.

What counts as failed, per replica (checked every `poll_interval_s`):
- `exited`: the engine process the stack started is gone (crash, OOM kill, a killed vLLM EngineCore that took the
  API server down with it);
- `unhealthy`: the process runs but /health failed `health_failures` times in a row (a killed vLLM EngineCore whose
  API server stays up answering 5xx; a wedged server);
- `hung`: the progress watchdog declared it hung (requests running, token counters frozen — /health stays 200
  there, so only the watchdog sees it); reported through `report_hung`;
- `alert`: an alert named in `restart_on_alerts` (default: the critical GPU alerts, XID and uncorrectable ECC)
  arrived at the stack's Alertmanager receiver with this replica's `replica` label — the GPU is gone or corrupts
  memory, so the engine on it is replaced (on a real node: after a GPU reset).

Remediation, on its own thread per replica (the others stay watched): drain the server at HAProxy (no new
requests), wait `restart_delay_s`, then SIGCONT + SIGKILL the engine's whole process group (a stopped TP worker
cannot act on SIGTERM, and a failed engine has nothing left worth draining), start it again on the same port
(`StackReplica.restart`: waits for /health, sets the server ready and waits until HAProxy has it UP). A failed start
is retried after `backoff_s`, doubled each time, at most `max_restarts` starts per failure; then the replica is left
drained and marked `given-up`. Every step is kept in `events` with monotonic and Unix times.

Safety: it only signals process groups the stack started and recorded (by pid + start time) and only talks to
loopback URLs of that stack.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from forge.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from forge.chaos.runner import Lab

GPU_ALERTS = ("ForgeGPUXidCritical", "ForgeGPUEccUncorrectable")
UP, RESTARTING, GIVEN_UP = "up", "restarting", "given-up"
FAILURE_KINDS = ("exited", "unhealthy", "hung", "alert")
HEALTH_TIMEOUT_S = 1.0
KILL_WAIT_S = 10.0
IN_TRANSIT_S = 0.3  # a request the client sent this long before a fault may not have reached HAProxy yet (2 cores)
# Options `configuration.supervisor` may set (Supervisor's keyword arguments, in seconds where named *_s).
OPTIONS = {"poll_interval_seconds": "poll_interval_s", "health_failures": "health_failures",
           "max_restarts": "max_restarts", "backoff_seconds": "backoff_s", "restart_delay_seconds": "restart_delay_s",
           "restart_on_alerts": "restart_on_alerts", "start_timeout_seconds": "start_timeout_s"}


def check_options(options: Any, lab_kind: str = "stack") -> dict[str, Any]:
    """configuration.supervisor, checked before anything starts: a mapping of OPTIONS keys ({} for defaults)."""
    if lab_kind != "stack":
        raise InputError("configuration.supervisor: needs the gateway — use configuration.lab: stack")
    if not isinstance(options, dict):
        raise InputError(f"configuration.supervisor {options!r}: a mapping of options ({{}} for the defaults)")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"configuration.supervisor: unknown option(s) {', '.join(unknown)} — valid: "
                         f"{', '.join(OPTIONS)}")
    return dict(options)


@dataclass
class SupervisedReplica:
    # forge.chaos.runner.StackReplica or StackEngine: .name, .server (HAProxy), .url, .pid, .component (the stack's
    # Component: owns_group, signal_group), .alive(), .wait_exit(timeout_s), .restart(timeout_s=...) -> seconds
    # (start again, wait for /health, set ready at HAProxy and wait until UP there).
    replica: Any
    state: str = UP
    health_failures: int = 0
    failures: int = 0                 # failures handled so far
    restarts: int = 0                 # successful restarts
    thread: threading.Thread | None = None


@dataclass
class Supervisor:
    replicas: Sequence[Any]
    gateway: Any                      # forge.reference_stack.stack.Gateway (drain / ready)
    receiver_file: Path | None = None
    poll_interval_s: float = 0.5
    health_failures: int = 3
    max_restarts: int = 3
    backoff_s: float = 2.0
    restart_delay_s: float = 0.0
    restart_on_alerts: Sequence[str] = GPU_ALERTS
    start_timeout_s: float | None = None   # None: the stack's engine start-up timeout
    log: Callable[[str], None] = lambda message: None
    events: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.poll_interval_s <= 10:
            problems.append(f"poll_interval_seconds {self.poll_interval_s!r}: use more than 0 and at most 10")
        if not isinstance(self.health_failures, int) or self.health_failures < 1:
            problems.append(f"health_failures {self.health_failures!r}: use a whole number >= 1")
        if not isinstance(self.max_restarts, int) or not 1 <= self.max_restarts <= 10:
            problems.append(f"max_restarts {self.max_restarts!r}: use 1-10")
        if self.backoff_s < 0 or self.restart_delay_s < 0:
            problems.append("backoff_seconds and restart_delay_seconds: use seconds >= 0")
        if problems:
            raise InputError("supervisor: " + "; ".join(problems))
        self._by_name = {r.name: SupervisedReplica(r) for r in self.replicas}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_alerts: set[tuple] = set()
        self._started_unix = time.time()

    @classmethod
    def for_lab(cls, lab: Lab, options: dict[str, Any] | None = None) -> Supervisor:
        """The supervisor for a stack lab, from `configuration.supervisor` (keys: see OPTIONS)."""
        if lab.stack is None:
            raise InputError("configuration.supervisor: needs the gateway — use configuration.lab: stack")
        options = check_options(options, lab.kind)
        return cls(lab.replicas, lab.gateway, receiver_file=lab.stack.receiver_file,
                   log=lambda m: lab.log(f"supervisor: {m}"), **{OPTIONS[k]: v for k, v in options.items()})

    # ---- inputs
    def report_hung(self, name: str, reason: str = "declared hung by the progress watchdog") -> None:
        """The watchdog's hook: `name` runs requests but makes no progress."""
        supervised = self._by_name.get(name)
        if supervised is not None:
            self._failed(supervised, "hung", reason)

    # ---- loop
    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="forge-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching; a restart already under way finishes (or fails once the stack goes down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        with httpx.Client(trust_env=False) as client:  # loopback only: never through a proxy
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    self.poll_once(client)
                except Exception as exc:  # keep supervising: one bad poll must not end it
                    self._event(None, "poll-error", f"{type(exc).__name__}: {exc}"[:200])
                self._stop.wait(max(0.0, self.poll_interval_s - (time.monotonic() - started)))

    def poll_once(self, client: httpx.Client) -> None:
        for supervised in self._by_name.values():
            if supervised.state != UP:
                continue
            r = supervised.replica
            if not r.alive():
                self._failed(supervised, "exited", f"engine process {r.pid} exited")
                continue
            try:
                code = client.get(r.url + "/health", timeout=HEALTH_TIMEOUT_S).status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            supervised.health_failures = 0 if code == 200 else supervised.health_failures + 1
            if supervised.health_failures >= self.health_failures:
                self._failed(supervised, "unhealthy", f"/health failed {supervised.health_failures} times in a row "
                                                      f"(last: {code})")
        self._check_alerts()

    def _check_alerts(self) -> None:
        if self.receiver_file is None or not self.restart_on_alerts:
            return
        from forge.reference_stack.receiver import alert_events

        by_server = {s.replica.server: s for s in self._by_name.values()}
        for event in alert_events(self.receiver_file):
            key = (event["alertname"], event["labels"].get("replica"), event["starts_at"])
            if (event["status"] != "firing" or event["alertname"] not in self.restart_on_alerts
                    or key in self._seen_alerts or event["received_unix"] < self._started_unix):
                continue
            self._seen_alerts.add(key)
            supervised = by_server.get(event["labels"].get("replica"))
            if supervised is not None:
                self._failed(supervised, "alert", f"{event['alertname']} firing (received "
                                                  f"{event['received_unix']:.3f})")

    # ---- remediation
    def _failed(self, supervised: SupervisedReplica, kind: str, reason: str) -> None:
        with self._lock:
            if supervised.state != UP or self._stop.is_set():
                return  # already being handled (or given up): one remediation at a time per replica
            supervised.state = RESTARTING
            supervised.failures += 1
        self._event(supervised, "failed", reason, kind=kind)
        supervised.thread = threading.Thread(target=self._remediate, args=(supervised,), daemon=True,
                                             name=f"forge-supervisor-{supervised.replica.name}")
        supervised.thread.start()

    def _remediate(self, supervised: SupervisedReplica) -> None:
        r = supervised.replica
        try:
            self.gateway.drain(r.server)
            self._event(supervised, "drained", f"HAProxy server {r.server} set to drain")
        except Exception as exc:  # HAProxy's checks still take a dead engine out; go on restarting it
            self._event(supervised, "drain-failed", f"{type(exc).__name__}: {exc}"[:200])
        if self._stop.wait(self.restart_delay_s):
            return
        self._kill(supervised)
        for attempt in range(1, self.max_restarts + 1):
            if self._stop.is_set():
                return
            try:
                seconds = r.restart(timeout_s=self.start_timeout_s)
            except Exception as exc:
                self._event(supervised, "restart-failed", f"attempt {attempt}: {type(exc).__name__}: "
                                                          f"{str(exc).splitlines()[0] if str(exc) else ''}"[:300])
                if attempt < self.max_restarts and not self._stop.wait(self.backoff_s * 2 ** (attempt - 1)):
                    continue
                break
            with self._lock:
                supervised.state, supervised.health_failures = UP, 0
                supervised.restarts += 1
            self._event(supervised, "up", f"restarted (pid {r.pid}) and UP at HAProxy in {seconds:.1f} s, "
                                          f"attempt {attempt}", attempt=attempt, restart_seconds=round(seconds, 3))
            return
        with self._lock:
            supervised.state = GIVEN_UP
        self._event(supervised, "given-up", f"not restarted after {self.max_restarts} attempt(s); left drained")

    def _kill(self, supervised: SupervisedReplica) -> None:
        """SIGCONT then SIGKILL the engine's process group (only while it is still the group the stack started)."""
        r = supervised.replica
        continued = r.component.owns_group()
        r.component.signal_group(signal.SIGCONT)  # a SIGSTOPped member must not stay stopped, whatever comes next
        r.component.signal_group(signal.SIGKILL)
        gone = r.wait_exit(KILL_WAIT_S)
        self._event(supervised, "killed", f"SIGCONT + SIGKILL to process group {r.pid}"
                                          + ("" if continued else " (already gone)")
                                          + ("" if gone else f"; still running after {KILL_WAIT_S:g} s"))

    # ---- results
    def _event(self, supervised: SupervisedReplica | None, event: str, detail: str, **extra: Any) -> None:
        row = {"replica": supervised.replica.name if supervised else None,
               "server": supervised.replica.server if supervised else None, "event": event, "detail": detail,
               "at": time.monotonic(), "unix": round(time.time(), 3), **extra}
        with self._lock:
            self.events.append(row)
        self.log(f"{row['replica'] or '-'}: {event}: {detail}")

    def first_event(self, name: str, event: str, since: float = 0.0) -> dict[str, Any] | None:
        """The first `event` of replica `name` at or after monotonic time `since`."""
        with self._lock:
            return next((e for e in self.events if e["replica"] == name and e["event"] == event
                         and e["at"] >= since), None)

    def state(self, name: str) -> str:
        return self._by_name[name].state

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no replica is being restarted."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.state != RESTARTING for s in self._by_name.values()):
                return True
            time.sleep(0.1)
        return False

    def summary(self) -> dict[str, Any]:
        return {s.replica.name: {"state": s.state, "failures": s.failures, "restarts": s.restarts}
                for s in self._by_name.values()}

    def journal_events(self, since_monotonic: float) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: v for k, v in {**e, "seconds_since_start": round(e["at"] - since_monotonic, 3)}.items()
                     if k != "at"} for e in self.events]


# ------------------------------------------------------------------------------------- the stack's supervisor
class StackEngine:
    """One engine of a running reference stack, as the long-running supervisor sees it: restarted with the command
    and environment the stack recorded for it (same port, same cores), the new process recorded in the stack's
    state file before anything waits on it (so `forge stack down` always finds it)."""

    def __init__(self, state: Any, component_name: str, gateway: Any, start_timeout_s: float,
                 gateway_timeout_s: float = 20.0):
        self.state, self.component_name, self.gateway = state, component_name, gateway
        self.name = component_name  # how the supervisor's events name it
        self.server = component_name.removeprefix("engine-")
        self.start_timeout_s, self.gateway_timeout_s = start_timeout_s, gateway_timeout_s
        self._lock = threading.Lock()
        self._closed = False
        self._children: dict[int, Any] = {}   # engines this process started: reaped once they exit

    @property
    def component(self):
        return self.state.component(self.component_name)

    @property
    def url(self) -> str:
        return self.component.url

    @property
    def pid(self) -> int:
        return self.component.pid

    def alive(self) -> bool:
        for pid, process in list(self._children.items()):
            if process.poll() is not None:   # reap: an exited child of ours stays a zombie until waited for
                del self._children[pid]
        return self.component.leader_alive()

    def wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.component.group_alive():
            self.alive()
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def restart(self, timeout_s: float | None = None) -> float:
        from forge.reference_stack import stack as stack_lib

        started = time.monotonic()
        with self._lock:  # held only while spawning: close() waits for a spawn under way to be recorded
            if self._closed:
                raise RuntimeError(f"{self.name}: the supervisor is stopping, not starting it again")
            old = self.component
            if stack_lib._stop_components([old]):
                raise RuntimeError(f"{self.name}: still running after SIGKILL (pid {old.pid})")
            command, env = self.command_and_env(old)
            new = stack_lib._spawn(old.name, old.kind, command, old.port, old.url, old.health_url,
                                   logs=Path(old.log).parent, env=env, stop_grace_s=old.stop_grace_s,
                                   env_overrides=old.env,  # kept recorded: the next restart binds the same cores
                                   processes=self._children)
            self.state.replace_component(new)  # before anything waits on it: `forge stack down` finds it too
        stack_lib._wait_healthy([new], timeout_s or self.start_timeout_s)
        self.gateway.ready(self.server)
        self.gateway.wait_server_status(self.server, "UP", self.gateway_timeout_s)
        return time.monotonic() - started

    def command_and_env(self, old) -> tuple[list[str], dict[str, str] | None]:
        """What a restart runs: the recorded command, in the inherited environment (plus the recorded overrides)."""
        return old.command, None

    def close(self) -> None:
        with self._lock:
            self._closed = True


def stack_supervisor(state_dir: Path, stall_seconds: float = 30.0, watchdog_interval_s: float = 1.0,
                     log: Callable[[str], None] = print, **options: Any) -> tuple[Supervisor, Any, list[StackEngine]]:
    """The supervisor of the reference stack in `state_dir` (not started): one StackEngine per engine, the stack's
    alert receiver, and a progress watchdog on the engines' /metrics whose `hung` verdict goes to `report_hung`.
    Returns (supervisor, watchdog loop, engines). options: Supervisor's keyword arguments."""
    from forge.chaos.watchdog import HUNG, ProgressWatchdog, WatchdogLoop, WatchTarget, metrics_url
    from forge.reference_stack import stack as stack_lib

    state = stack_lib.StackState.load(Path(state_dir))
    if state is None:
        raise InputError(f"{state_dir}: no running stack — start one with `forge stack up --supervise`")
    gateway = stack_lib.Gateway(state)
    start_timeout = stack_lib.VLLM_STARTUP_TIMEOUT_S if state.plan["engine"] == "vllm" else \
        stack_lib.SIM_STARTUP_TIMEOUT_S
    engines = [StackEngine(state, c.name, gateway, start_timeout) for c in state.engines()]
    supervisor = Supervisor(engines, gateway, receiver_file=state.receiver_file, log=log, **options)

    def on_transition(transition) -> None:
        log(f"watchdog: {transition.replica} {transition.previous} -> {transition.state} ({transition.reason})")
        if transition.state == HUNG:
            supervisor.report_hung(transition.replica, transition.reason)

    watchdog = WatchdogLoop([WatchTarget(e.name, metrics_url(e.url)) for e in engines],
                            ProgressWatchdog(stall_seconds), on_transition=on_transition,
                            poll_interval_s=watchdog_interval_s)
    return supervisor, watchdog, engines


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m forge.chaos.supervisor --state-dir DIR`: supervise a running reference stack until SIGTERM/SIGINT
    (`forge stack up --supervise` starts it as a stack component; `forge stack down` stops it first)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m forge.chaos.supervisor",
                                     description="Restart failed or hung replicas of a running reference stack.")
    parser.add_argument("--state-dir", type=Path, required=True, help="the stack's state directory")
    parser.add_argument("--stall-seconds", type=float, default=30.0,
                        help="hung: requests running but no output token for this long")
    parser.add_argument("--watchdog-interval", type=float, default=1.0, help="seconds between /metrics scrapes")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between process and /health checks")
    parser.add_argument("--health-failures", type=int, default=3)
    parser.add_argument("--max-restarts", type=int, default=3)
    parser.add_argument("--backoff-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
        print(f"{stamp} supervisor: {message}", flush=True)

    try:  # bad settings (InputError from the Supervisor or the watchdog) are found before anything starts
        supervisor, watchdog, engines = stack_supervisor(
            args.state_dir, args.stall_seconds, args.watchdog_interval, log, poll_interval_s=args.poll_interval,
            health_failures=args.health_failures, max_restarts=args.max_restarts, backoff_s=args.backoff_seconds)
    except InputError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor.start()
    watchdog.start()
    log(f"watching {', '.join(f'{e.name} (pid {e.pid})' for e in engines)}: exited, /health failing "
        f"{supervisor.health_failures}x, hung (no token for {args.stall_seconds:g} s), alerts "
        f"{', '.join(supervisor.restart_on_alerts)}")
    while not stop.wait(1.0):
        pass
    log("stopping")
    watchdog.stop()
    supervisor.stop()
    for engine in engines:  # an engine being spawned right now is recorded in the state file before we exit
        engine.close()
    log(f"stopped: {supervisor.summary()}")
    return 0


# ------------------------------------------------------------------------------------------ activities
# What `provider: {type: python, module: forge.chaos.supervisor, func: ...}` calls (game days "GPU fault" and "hung
# tensor-parallel worker"); each takes the runner's stack lab first. Measurements go into the journal under
# `prefix` + detection_seconds / alert_seconds / recovery_seconds / in_flight_at_fault / lost_requests.
ENGINE_CORE_MARK = "EngineCore"     # vLLM V1's engine-core process: comm "VLLM::EngineCore" (title set by vLLM)
TP_WORKER_MARK = "Worker_TP{rank}"  # its multiproc executor's workers: comm "VLLM::Worker_TP1"


def _gameday(lab: Lab) -> dict[str, Any]:
    state = getattr(lab, "gameday", None)
    if state is None:
        state = lab.gameday = {"fault": None, "stopped": []}
    return state


def _supervisor(lab: Lab) -> Supervisor:
    if lab.supervisor is None:
        raise RuntimeError("no supervisor: set configuration.supervisor ({} for the defaults) on a stack lab")
    return lab.supervisor


def _replica(lab: Lab, replica: int):
    if lab.stack is None:
        raise RuntimeError("this activity needs the gateway: use configuration.lab: stack")
    if not 0 <= replica < len(lab.replicas):
        raise ValueError(f"replica {replica}: the lab has replicas 0-{len(lab.replicas) - 1}")
    return lab.replicas[replica]


def _in_flight(lab: Lab, server: str) -> int:
    """Requests HAProxy has open on `server` now (`scur`): what a fault on it puts at risk."""
    return next((row.get("scur", 0) for row in lab.server_stats() if row["name"] == server), 0)


def _engine_queue(r: Any) -> int | None:
    """Requests the engine holds (running + waiting, through the signal catalog), None when it does not answer."""
    from forge.exporters.normalize import NormalizeError, normalize

    try:
        page = normalize(httpx.get(r.url + "/metrics", timeout=2, trust_env=False).text)
    except (httpx.HTTPError, NormalizeError):
        return None
    return int(sum(float(v) for name in ("forge_requests_running", "forge_requests_waiting")
                   if name in page.families for v in page.families[name].series.values()))


def _record_fault(lab: Lab, r: Any, kind: str, prefix: str, in_flight: int, engine_queue: int | None = None,
                  **detail: Any) -> dict[str, Any]:
    # In flight: what HAProxy has open on the server, or what the engine holds if that is more (a request can sit in
    # the engine's queue after HAProxy's session count was read).
    in_flight = max(in_flight, engine_queue or 0)
    fault = {"replica": r.name, "server": r.server, "kind": kind, "prefix": prefix, "at": time.monotonic(),
             "unix": time.time(), "in_flight": in_flight, "engine_queue_at_fault": engine_queue, **detail}
    _gameday(lab)["fault"] = fault
    lab.fault_injected_at[r.name] = fault["at"]
    lab.journal.measurements[f"{prefix}in_flight_at_fault"] = in_flight
    return {k: v for k, v in fault.items() if k not in ("at", "prefix")}


def _skipped(lab: Lab, phase: str | None) -> dict[str, Any] | None:
    """An activity of a phase the configuration leaves out (`phases`, default all): skipped, recorded as such.
    Lets one experiment file run on engines where some fault cannot be injected (no GPU metrics on real vLLM)."""
    phases = lab.config.get("phases")
    if phase is None or phases is None or phase in phases:
        return None
    return {"skipped": f"phase {phase!r} not in configuration.phases {phases}"}


def _fault(lab: Lab) -> dict[str, Any]:
    fault = _gameday(lab)["fault"]
    if fault is None and lab.fault_injected_at:
        # A fault from forge.chaos.actions.inject_fault (the simulator's fault API): measure from it too.
        name, at = max(lab.fault_injected_at.items(), key=lambda item: item[1])
        r = next(r for r in lab.replicas if r.name == name)
        fault = {"replica": name, "server": getattr(r, "server", None), "kind": "simulator-fault", "prefix": "",
                 "at": at, "unix": time.time() - (time.monotonic() - at), "in_flight": None}
    if fault is None:
        raise RuntimeError("no fault injected yet: nothing to measure")
    return fault


def _wait_running(lab: Lab, server: str, wait_seconds: float) -> int:
    """Wait (bounded) until HAProxy has requests open on `server`: a fault must hit work in flight."""
    deadline = time.monotonic() + wait_seconds
    while (scur := _in_flight(lab, server)) <= 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"server {server}: no request in flight within {wait_seconds:g} s")
        time.sleep(0.05)
    return scur


def _at_risk(lab: Lab, r: Any, wait_seconds: float) -> tuple[int, int | None]:
    """(HAProxy's open requests on the replica, the engine's running + waiting), once requests are in flight; the
    HAProxy count read last, right before the fault."""
    _wait_running(lab, r.server, wait_seconds)
    queue = _engine_queue(r)
    return _in_flight(lab, r.server), queue


def _members(r: Any) -> list[tuple[int, str]]:
    """(pid, comm + command line) of every live process in the replica's process group (the one the stack started)."""
    from forge.reference_stack.stack import _group_members

    component = r.component
    if not component.owns_group():
        return []
    found = []
    for pid in _group_members(component.pid):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((pid, f"{comm} {cmdline}"))
    return found


def _member_pid(r: Any, mark: str) -> int:
    matches = [pid for pid, text in _members(r) if mark in text]
    if not matches:
        names = "; ".join(text[:60] for _, text in _members(r))
        raise RuntimeError(f"{r.name}: no process showing {mark!r} in its process group {r.pid} ({names})")
    return matches[0]


def inject_gpu_fault(lab: Lab, replica: int, xid: int = 79, ecc_dbe: int = 0, prefix: str = "xid_",
                     wait_seconds: float = 10,
                     phase: str | None = None) -> dict[str, Any]:
    """The simulator's GPU fault: DCGM_FI_DEV_XID_ERRORS = xid (79: fallen off the bus) and, with ecc_dbe,
    DCGM_FI_DEV_ECC_DBE_VOL_TOTAL on the replica's /gpu-metrics — what dcgm-exporter shows on a real node."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    r = _replica(lab, replica)
    if lab.engine != "simulator":
        raise RuntimeError("inject_gpu_fault: only the simulator shows DCGM metrics (real vLLM on CPU has no GPU)")
    in_flight, queue = _at_risk(lab, r, wait_seconds)
    answer = httpx.post(r.url + "/_forge/faults", json={"mode": "xid", "xid": xid, "ecc_dbe": ecc_dbe}, timeout=5,
                        trust_env=False)
    answer.raise_for_status()
    return _record_fault(lab, r, "gpu", prefix, in_flight, queue, xid=xid, ecc_dbe=ecc_dbe)


def kill_engine(lab: Lab, replica: int, process: str = "engine", prefix: str = "",
                wait_seconds: float = 10,
                phase: str | None = None) -> dict[str, Any]:
    """SIGKILL the replica's engine while requests are in flight on it. process: `engine` (the whole process
    group: a crashed simulator, a node losing the engine) or `engine-core` (vLLM only: just the EngineCore child,
    found among the group's members; vLLM's API server notices and exits — see docs/chaos.md)."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    r = _replica(lab, replica)
    if process not in ("engine", "engine-core"):
        raise ValueError(f"process {process!r}: use engine or engine-core")
    in_flight, queue = _at_risk(lab, r, wait_seconds)
    if process == "engine":
        pid = r.pid
        if not r.signal(signal.SIGKILL):
            raise RuntimeError(f"{r.name}: engine pid {r.pid} was not running")
    else:
        if lab.engine != "vllm":
            raise RuntimeError("process engine-core: only vLLM has an EngineCore process — use process: engine")
        pid = _member_pid(r, ENGINE_CORE_MARK)
        os.kill(pid, signal.SIGKILL)  # a member of the group the stack started, found just now
    return _record_fault(lab, r, f"kill-{process}", prefix, in_flight, queue, pid=pid)


def stop_tp_worker(lab: Lab, replica: int, rank: int = 1, prefix: str = "",
                   wait_seconds: float = 30,
                   phase: str | None = None) -> dict[str, Any]:
    """SIGSTOP one tensor-parallel worker of a real vLLM replica while requests run: the collective its peers wait
    in never completes (an NCCL hang), /health stays 200. The stopped pid is SIGCONTed at teardown, always."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    r = _replica(lab, replica)
    if lab.engine != "vllm":
        raise RuntimeError("stop_tp_worker: needs real vLLM with tp >= 2 (configuration.engine: vllm, tp: 2)")
    pid = _member_pid(r, TP_WORKER_MARK.format(rank=rank))
    in_flight, queue = _at_risk(lab, r, wait_seconds)
    state = _gameday(lab)
    state["stopped"].append(pid)
    lab.on_close(lambda: resume_stopped_workers(lab))
    os.kill(pid, signal.SIGSTOP)
    fault = _record_fault(lab, r, "tp-worker-stop", prefix, in_flight, queue, pid=pid, rank=rank)
    # A hung engine keeps its connections: read HAProxy again a moment later so requests the load generator had
    # sent just before the stop, still on their way through HAProxy at the first read, count as in flight too.
    time.sleep(IN_TRANSIT_S)
    fault["in_flight"] = _gameday(lab)["fault"]["in_flight"] = max(fault["in_flight"], _in_flight(lab, r.server))
    lab.journal.measurements[f"{prefix}in_flight_at_fault"] = fault["in_flight"]
    return fault


def resume_stopped_workers(lab: Lab) -> dict[str, Any]:
    """Rollback: SIGCONT every worker this game day stopped that still runs (a restart may have killed it)."""
    from forge.reference_stack.stack import _proc_start_time

    resumed = []
    for pid in _gameday(lab)["stopped"]:
        if _proc_start_time(pid) is not None and any(pid in [p for p, _ in _members(r)] for r in lab.replicas):
            os.kill(pid, signal.SIGCONT)
            resumed.append(pid)
    return {"resumed": resumed}


def await_gateway_out(lab: Lab, replica: int, timeout_seconds: float = 30, measurement: str = "detection_seconds",
                      statuses: Sequence[str] = ("DOWN", "DRAIN", "MAINT", "NOLB"),
                      phase: str | None = None) -> dict[str, Any]:
    """Wait until HAProxy stops sending new requests to the replica (status DOWN, DRAIN or MAINT): `measurement`
    (prefixed; detection_seconds) counts from the fault. statuses: [DOWN] waits for HAProxy's own health checks
    (a drain by the supervisor does not count). Its bound: check interval x fall for a dead engine; the watchdog's
    for a hang."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    r = _replica(lab, replica)
    fault = _fault(lab)
    deadline = fault["at"] + timeout_seconds
    while time.monotonic() < deadline:
        status = next((row["status"] for row in lab.server_stats() if row["name"] == r.server), "")
        if status.split(" ")[0] in statuses:
            seconds = round(time.monotonic() - fault["at"], 3)
            lab.journal.measurements[f"{fault['prefix']}{measurement}"] = seconds
            return {"replica": r.name, "server": r.server, "haproxy_status": status, measurement: seconds}
        time.sleep(0.05)
    raise TimeoutError(f"{r.name}: HAProxy still sends it requests {timeout_seconds:g} s after the fault")


def await_alert(lab: Lab, alert: str, replica: int, timeout_seconds: float = 60,
                measurement: str = "alert_seconds",
                phase: str | None = None) -> dict[str, Any]:
    """Wait until `alert` for the replica (label replica = its HAProxy server name) reaches the stack's
    Alertmanager receiver as firing; `measurement` (prefixed) = seconds from the fault to its arrival."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    from forge.reference_stack.receiver import alert_events

    r = _replica(lab, replica)
    fault = _fault(lab)
    deadline = fault["at"] + timeout_seconds
    while time.monotonic() < deadline:
        # Active since the fault (Prometheus' startsAt): not a re-sent notification of an earlier episode.
        events = [e for e in alert_events(lab.stack.receiver_file) if e["alertname"] == alert
                  and e["status"] == "firing" and e["labels"].get("replica") == r.server
                  and e["received_unix"] >= fault["unix"] and _unix(e["starts_at"]) >= fault["unix"]]
        if events:
            seconds = round(events[0]["received_unix"] - fault["unix"], 3)
            lab.journal.measurements[f"{fault['prefix']}{measurement}"] = seconds
            return {"alert": alert, "replica": r.server, "seconds_after_fault": seconds,
                    "severity": events[0]["labels"].get("severity")}
        time.sleep(0.2)
    raise TimeoutError(f"{alert} for {r.server} did not reach the receiver within {timeout_seconds:g} s of the fault")


def await_alerts_clear(lab: Lab, replica: int, alerts: Sequence[str], timeout_seconds: float = 30,
                       phase: str | None = None) -> dict[str, Any]:
    """Wait until none of `alerts` is active for the replica, in Prometheus and at the receiver: the next fault's
    alert is then a new episode, not the tail of an earlier one (an engine restarted seconds ago may still have one).

    Prometheus clearing is not enough. Alertmanager sends the resolved notification only at the group's next flush
    (group_interval later); an alert with the same labels firing again before that flush matches the firing set it
    last notified, so Alertmanager stays silent until repeat_interval — the new episode would never arrive. Hence:
    every alert the receiver last saw firing must have been seen resolved."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    from forge.reference_stack.receiver import alert_events

    r = _replica(lab, replica)
    names = "|".join(alerts)
    query = f'ALERTS{{alertname=~"{names}",replica="{r.server}"}}'
    started = time.monotonic()
    active: list[str] = []
    while time.monotonic() - started < timeout_seconds:
        answer = httpx.get(lab.stack.prometheus_url + "/api/v1/query", params={"query": query}, timeout=5,
                           trust_env=False).json()
        active = [f"{s['metric']['alertname']} ({s['metric'].get('alertstate')}, Prometheus)"
                  for s in answer["data"]["result"]]
        # One Alertmanager group per label set (group_by '...'); the receiver's file is in arrival order.
        last_status: dict[tuple, tuple[str, str]] = {}
        for event in alert_events(lab.stack.receiver_file):
            if event["alertname"] in alerts and event["labels"].get("replica") == r.server:
                last_status[tuple(sorted(event["labels"].items()))] = (event["alertname"], event["status"])
        active += [f"{name} (notified firing, resolved not yet notified)"
                   for name, status in last_status.values() if status == "firing"]
        if not active:
            return {"replica": r.server, "waited_seconds": round(time.monotonic() - started, 3)}
        time.sleep(0.5)
    raise TimeoutError(f"{r.server}: still active after {timeout_seconds:g} s: {', '.join(active)}")


def _unix(iso: str | None) -> float:
    """Alertmanager's RFC 3339 time (nanosecond digits, Z) as Unix seconds; 0 when absent or unreadable."""
    import datetime as dt
    import re

    if not iso:
        return 0.0
    text = re.sub(r"(\.\d{6})\d+", r"\1", iso.replace("Z", "+00:00"))
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def await_rejoined(lab: Lab, replica: int, timeout_seconds: float = 60, phase: str | None = None) -> dict[str, Any]:
    """Wait until the supervisor restarted the replica after the fault and HAProxy has it UP again:
    recovery_seconds counts from the fault."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    r = _replica(lab, replica)
    supervisor, fault = _supervisor(lab), _fault(lab)
    deadline = fault["at"] + timeout_seconds
    while time.monotonic() < deadline:
        up = supervisor.first_event(r.name, "up", since=fault["at"])
        if up is not None:
            lab.wait_server_status(r.server, "UP", max(1.0, deadline - time.monotonic()))
            recovery = round(time.monotonic() - fault["at"], 3)
            prefix = fault["prefix"]
            failed = supervisor.first_event(r.name, "failed", since=fault["at"])
            m = lab.journal.measurements
            m[f"{prefix}recovery_seconds"] = recovery
            m[f"{prefix}restart_seconds"] = up.get("restart_seconds")
            m[f"{prefix}failure_seen_as"] = failed["kind"] if failed else None
            return {"replica": r.name, "recovery_seconds": recovery, "pid": r.pid, "attempt": up.get("attempt"),
                    "restart_seconds": up.get("restart_seconds"), "failure": failed and failed["detail"]}
        if supervisor.state(r.name) == GIVEN_UP:
            raise RuntimeError(f"{r.name}: the supervisor gave up restarting it")
        time.sleep(0.1)
    raise TimeoutError(f"{r.name}: not restarted and UP within {timeout_seconds:g} s of the fault "
                       f"(supervisor: {supervisor.summary()[r.name]})")


def count_fault_losses(lab: Lab, settle_seconds: float = 1.0, phase: str | None = None) -> dict[str, Any]:
    """Requests lost to the fault: in flight when it struck (sent before, failed after) — at most what the
    replica held (in_flight_at_fault) — and failures among requests sent after it, which the gateway must have
    served elsewhere. Writes lost_requests, new_requests and new_requests_lost (prefixed)."""
    if (skipped := _skipped(lab, phase)) is not None:
        return skipped
    from forge.chaos.spot import _lost

    fault = _fault(lab)
    time.sleep(settle_seconds)
    records = lab.load_records()
    lost = [rec for rec in records if _lost(rec) and (rec.get("sent_at") or 0) < fault["unix"] <= rec["finished_at"]]
    new = [rec for rec in records if (rec.get("sent_at") or 0) >= fault["unix"]]
    new_lost = [rec for rec in new if _lost(rec)]
    m, prefix = lab.journal.measurements, fault["prefix"]
    m[f"{prefix}lost_requests"] = len(lost)
    m[f"{prefix}new_requests"] = len(new)
    m[f"{prefix}new_requests_lost"] = len(new_lost)
    return {"lost_requests": len(lost), "in_flight_at_fault": fault["in_flight"], "new_requests": len(new),
            "new_requests_lost": len(new_lost), "lost_outcomes": dict(Counter(rec["outcome"] for rec in lost)),
            "lost_sent_seconds_before_fault": sorted(round(fault["unix"] - rec["sent_at"], 2) for rec in lost)[:40],
            "errors": sorted({(rec.get("error") or "")[:120] for rec in lost + new_lost})[:5]}


def stop_supervisor(lab: Lab, wait_seconds: float = 60) -> dict[str, Any]:
    """Rollback: let a restart under way finish (bounded), stop the supervisor (so no other rollback races it) and
    put its events into the journal's measurements."""
    supervisor = _supervisor(lab)
    idle = supervisor.wait_idle(wait_seconds)
    supervisor.stop()
    if not idle:
        lab.journal.notes.append(f"supervisor: a restart was still under way after {wait_seconds:g} s")
    lab.journal.measurements["supervisor"] = {"replicas": supervisor.summary(),
                                              "events": supervisor.journal_events(lab.journal._started)}
    return supervisor.summary()


def all_replicas_supervised_up(lab: Lab) -> bool:
    """Probe: the supervisor has every replica up (none being restarted, none given up)."""
    supervisor = _supervisor(lab)
    return all(supervisor.state(r.name) == UP for r in lab.replicas)


if __name__ == "__main__":
    raise SystemExit(main())
