"""Run a Chaos Toolkit-shaped experiment against engines Forge starts itself, and journal it.

    journal = run_experiment(load_experiment("engine-hang"), Path("journal.json"), overrides={"stall_seconds": 5})

Order, as Chaos Toolkit: steady-state hypothesis before (a miss fails the run and skips the method), the method,
the hypothesis after (a miss marks the journal deviated), then the rollbacks — which ALWAYS run, after a failed
step or Ctrl-C too. Whatever the experiment says, the engines and the load the runner started are stopped at the
end (`Lab.close`). Safety: the lab only starts processes on 127.0.0.1, sends load to them only, and every fault
reaches a process by the pid the lab itself started.

Two labs, chosen by `configuration.lab`:
- `replicas` (default): simulator replicas addressed directly, each its own process (and session); load goes to
  every replica. Variables: `replica_N_url`.
- `stack`: the reference stack (forge.reference_stack.stack.up) — `engine: simulator` (default) or `engine: vllm`
  replicas behind HAProxy, with Prometheus and Alertmanager — on free loopback ports, in a temporary state dir,
  with a short HAProxy check interval; `stack.down` always runs in `Lab.close`. The load goes through the gateway.
  Configuration: `replicas`, `engine`, `check_interval_ms` (200), `scrape_interval_seconds` (1), `exporter`
  (false), `simulator_options` ({max_num_seqs: 8, ...}: simulator flags), `shutdown_timeout_seconds` (the
  engines' --shutdown-timeout; null = the engine's default 0; `fit-notice` = notice_seconds − safety_margin_seconds,
  see forge.chaos.spot), `model_dir` (vllm), `weights` (HAProxy weight per replica, default 100 each),
  `load_rate` (requests/s through the gateway; default load_rate_per_replica x replicas), `tp` (vllm tensor
  parallel size), `vllm_args` (extra vLLM flags), `alert_rules` ({ForgeEngineDown: {for: 1s}}: the committed
  rules with these alerts shortened, see short_rule_copy), `supervisor` (forge.chaos.supervisor options, {} for
  defaults: replicas that exit, fail /health, hang or get a GPU alert are drained, restarted and put back;
  `lab.supervisor`).
  Variables: `gateway_url`, `prometheus_url`, `alertmanager_url`, `haproxy_socket`, `replica_N_url`,
  `replica_N_server` (its HAProxy server name, s0, s1, ...), `replica_N_pid`.

What an activity (`func(lab, **arguments)`) finds on the lab:
- `lab.replicas[i]`: `.name` (replica-i), `.url`, `.start()`, `.stop()`, `.restart()`; on the stack lab also
  `.server` (HAProxy name), `.pid` (the engine's process-group leader, as the stack started it), `.alive()`,
  `.signal(sig)` (to its process group, only while the pid is still the one started), `.wait_exit(timeout_s)`,
  `.restart(shutdown_timeout_s=...)` (same port; re-registered in the stack's state file; HAProxy set ready and
  waited UP).
- stack lab only: `lab.stack` (the StackState: components, URLs, `haproxy_socket`), `lab.gateway` (a
  forge.reference_stack.stack.Gateway: `drain/ready/set_state/set_weight/servers/command`),
  `lab.server_stats()` (HAProxy `show stat` rows of the backend's servers: status, scur, ...),
  `lab.wait_server_status(server, "UP", timeout_s)`.
- both: `lab.load_records()` (every finished load request, with `finished_at` Unix time), `lab.journal`
  (write measurements into `lab.journal.measurements`), `lab.config`, `lab.log(message)`, `lab.on_close(fn)`
  (run at teardown, before the engines stop: stop whatever the activity started).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import httpx
import yaml

from forge.chaos.journal import ActivityRecord, Journal, record_activity
from forge.chaos.supervisor import StackEngine
from forge.chaos.watchdog import HUNG, ProgressWatchdog, Transition, WatchdogLoop, WatchTarget, metrics_url
from forge.errors import InputError
from forge.load.runner import is_loopback_url

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
# Experiments call Forge's activities, never arbitrary code.
ALLOWED_MODULES = ("forge.chaos.actions", "forge.chaos.spot", "forge.chaos.rollout", "forge.chaos.supervisor")
ENGINE_START_TIMEOUT_S = 20.0
LAB_KINDS = ("replicas", "stack")
STACK_ENGINES = {"simulator": "sim", "vllm": "vllm"}
# HAProxy checks in the stack lab: a stopped replica is marked DOWN after fall x interval (0.4 s), not 2 s.
STACK_CHECK_INTERVAL_MS = 200
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ------------------------------------------------------------------------------------------------ experiments
def list_experiments() -> list[tuple[str, str]]:
    """(name, title) of every bundled experiment."""
    return [(p.stem, (yaml.safe_load(p.read_text()) or {}).get("title", "")) for p in sorted(EXPERIMENTS_DIR.glob("*.yaml"))]


def load_experiment(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(n for n, _ in list_experiments())
        raise InputError(f"experiment {name_or_path!r}: not found — use a bundled name ({names}) or a YAML path")
    try:
        experiment = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}) — fix the file") from None
    problems = []
    if not isinstance(experiment, dict):
        raise InputError(f"{path}: an experiment is a mapping with title, method, ... — fix the file")
    for key in ("title", "method"):
        if key not in experiment:
            problems.append(f"{path}: {key!r} missing — every experiment needs a title and a method")
    for section in ("steady-state-hypothesis", "method", "rollbacks"):
        activities = experiment.get(section) or []
        if section == "steady-state-hypothesis":
            activities = activities.get("probes") or [] if isinstance(activities, dict) else []
        for i, activity in enumerate(activities):
            provider = (activity or {}).get("provider") or {}
            where = f"{path}: {section}[{i}] {activity.get('name', '?')!r}"
            if provider.get("type") == "python" and provider.get("module") not in ALLOWED_MODULES:
                problems.append(f"{where}: module {provider.get('module')!r} not allowed — use "
                                f"{' or '.join(ALLOWED_MODULES)}")
            elif provider.get("type") not in ("python", "http"):
                problems.append(f"{where}: provider type {provider.get('type')!r} — use python or http")
    if problems:
        raise InputError(problems)
    experiment.setdefault("configuration", {})
    return experiment


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ${name} like Chaos Toolkit; a value that is exactly one placeholder keeps the variable's type."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    return value


def within_tolerance(output: Any, tolerance: Any) -> bool:
    """Chaos Toolkit's tolerance forms: a scalar (equal; for an http probe, its status), a list (one of), or
    {type: range, range: [lo, hi]}."""
    if isinstance(output, dict) and "status" in output and not isinstance(tolerance, dict):
        output = output["status"]
    if isinstance(tolerance, dict) and tolerance.get("type") == "range":
        low, high = tolerance["range"]
        return isinstance(output, (int, float)) and not isinstance(output, bool) and low <= output <= high
    if isinstance(tolerance, list):
        return output in tolerance
    if isinstance(tolerance, bool) or isinstance(output, bool):
        return output is tolerance
    return output == tolerance


# ---------------------------------------------------------------------------------------------------- the lab
class Replica:
    """One simulator process on 127.0.0.1; restartable on the same port (the gateway's address stays valid)."""

    def __init__(self, index: int, options: dict[str, Any]):
        self.index, self.name, self.options = index, f"replica-{index}", options
        self.port, self.url = 0, ""
        self._stack: ExitStack | None = None
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        from forge.reference_stack.simulator import serve

        with self._lock:
            if self._closed:  # a restart racing the lab's teardown must not leave a process behind
                raise RuntimeError(f"{self.name}: the lab is shutting down, not starting it again")
            stack = ExitStack()
            # Own session: a terminal's Ctrl-C reaches the runner only, whose rollbacks and Lab.close stop it.
            self.url = stack.enter_context(serve(port=self.port, in_subprocess=True, new_session=True,
                                                 startup_timeout_s=ENGINE_START_TIMEOUT_S, **self.options))
            self.port = int(self.url.rsplit(":", 1)[1])
            self._stack = stack

    def stop(self, final: bool = False) -> None:
        with self._lock:
            self._closed = self._closed or final
            stack, self._stack = self._stack, None
            if stack is not None:
                stack.close()  # SIGTERM, then SIGKILL if it does not exit

    def restart(self) -> None:
        self.stop()
        self.start()


def simulator_flags(options: dict[str, Any]) -> list[str]:
    """SimulatorConfig fields as the simulator's CLI flags ({max_num_seqs: 8} -> ["--max-num-seqs", "8"])."""
    from forge.reference_stack.simulator.config import SimulatorConfig

    unknown = sorted(set(options) - set(SimulatorConfig.option_names()))
    if unknown:
        raise InputError(f"configuration.simulator_options: unknown option(s) {', '.join(unknown)} — valid: "
                         f"{', '.join(SimulatorConfig.option_names())}")
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += ([flag] if value else ["--no-" + name.replace("_", "-")]) if isinstance(value, bool) else [flag, str(value)]
    return flags


def short_rule_copy(rules_path: Path, overrides: dict[str, Any], out: Path) -> Path:
    """The committed rule file with some alerts shortened, so a lab sees them in seconds instead of minutes:
    {ForgeEngineDown: {for: 1s}, ForgeEngineHung: {for: 1s, window: 6s}} — `window` replaces every range selector
    ([2m]) of the expression. Same names, expressions otherwise unchanged."""
    if not isinstance(overrides, dict):
        raise InputError("configuration.alert_rules: a mapping of alert name to {for: 1s, window: 6s}")
    rules = yaml.safe_load(Path(rules_path).read_text())
    found = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            change = overrides.get(rule.get("alert"))
            if change is None:
                continue
            found.add(rule["alert"])
            unknown = set(change or {}) - {"for", "window"}
            if unknown:
                raise InputError(f"configuration.alert_rules.{rule['alert']}: unknown key(s) "
                                 f"{', '.join(sorted(unknown))} — use for and window")
            if "for" in change:
                rule["for"] = str(change["for"])
            if "window" in change:
                rule["expr"] = re.sub(r"\[[0-9]+[smhd]\]", f"[{change['window']}]", rule["expr"])
    missing = sorted(set(overrides) - found)
    if missing:
        raise InputError(f"configuration.alert_rules: no alert {', '.join(missing)} in {rules_path} — use names "
                         "of its alerts")
    out.write_text(yaml.safe_dump(rules, sort_keys=False))
    return out


class StackReplica(StackEngine):
    """One engine of the reference stack the lab started (component engine-sN, HAProxy server sN): the supervisor's
    StackEngine (signals by the recorded pid while its start time matches; a restart runs the recorded command on
    the same port and records the new process in the state file, so `stack.down` stops it too), with the lab's
    engine command — its --shutdown-timeout can change between restarts — and the lab's names (replica-N)."""

    def __init__(self, lab: "Lab", index: int):
        from forge.reference_stack import stack as stack_lib

        super().__init__(lab.stack, f"engine-s{index}", lab.gateway,
                         stack_lib.VLLM_STARTUP_TIMEOUT_S if lab.engine == "vllm" else stack_lib.SIM_STARTUP_TIMEOUT_S)
        self.lab, self.index = lab, index
        self.name = f"replica-{index}"

    def signal(self, sig: int = signal.SIGTERM) -> bool:
        """Signal the engine's process group; False when the process the stack started is gone already."""
        component = self.component
        if not component.leader_alive():
            return False
        component.signal_group(sig)
        return True

    def start(self) -> None:
        self.restart()

    def stop(self, final: bool = False) -> None:
        from forge.reference_stack import stack as stack_lib

        with self._lock:
            self._closed = self._closed or final
            survivors = stack_lib._stop_components([self.component])  # SIGTERM, SIGKILL after its grace
            if survivors:
                raise RuntimeError(f"{self.name}: still running after SIGKILL (pid {self.pid})")

    def restart(self, shutdown_timeout_s: int | None | str = "unchanged", timeout_s: float | None = None) -> float:
        """Stop it if it runs, start it again on the same port, wait for /health, set its HAProxy server ready
        and wait until HAProxy has it UP; returns the seconds that took. shutdown_timeout_s: the engine's
        --shutdown-timeout from now on (None = the engine's default, 0)."""
        if shutdown_timeout_s != "unchanged":
            self.lab.engine_shutdown_timeout[self.index] = shutdown_timeout_s
        return super().restart(timeout_s)

    def command_and_env(self, old) -> tuple[list[str], dict[str, str] | None]:
        return self.lab.engine_command(self.index, old.command)


@dataclass
class Lab:
    """What an experiment runs against: replicas (bare, or the reference stack behind HAProxy), the bounded load on
    them, the watchdog watching them. See the module docstring for what activities may use."""

    config: dict[str, Any]
    journal: Journal
    log: Callable[[str], None] = lambda message: None
    replicas: list[Any] = field(default_factory=list)   # Replica (bare lab) or StackReplica (stack lab)
    fault_injected_at: dict[str, float] = field(default_factory=dict)
    detected_at: dict[str, float] = field(default_factory=dict)
    remediation_done: threading.Event = field(default_factory=threading.Event)
    remediation_error: str | None = None

    def __post_init__(self) -> None:
        self.kind = self.config.get("lab", "replicas")
        self.engine = self.config.get("engine", "simulator")
        self.watchdog = ProgressWatchdog(float(self.config.get("stall_seconds", 30)))
        self._load_thread: threading.Thread | None = None
        self._load_loop: asyncio.AbstractEventLoop | None = None
        self._load_stop: asyncio.Event | None = None
        self._load_records: list[dict] = []
        self._load_result: dict[str, Any] | None = None
        self.watchdog_loop: WatchdogLoop | None = None
        self._remediation: threading.Thread | None = None
        self._closers: list[Callable[[], Any]] = []
        self.supervisor = None      # forge.chaos.supervisor.Supervisor, with configuration.supervisor (stack lab)
        # Stack lab only.
        self.stack = None           # forge.reference_stack.stack.StackState
        self.gateway = None         # forge.reference_stack.stack.Gateway on the stack's admin socket
        self.state_dir: Path | None = None
        self.engine_shutdown_timeout: dict[int, int | None] = {}

    # ---- engines
    def start_engines(self) -> None:
        if self.kind == "stack":
            self._start_stack()
            return
        for i in range(int(self.config.get("replicas", 2))):
            replica = Replica(i, dict(self.config.get("simulator_options") or {}))
            self.replicas.append(replica)
            replica.start()
            self.log(f"started {replica.name} at {replica.url}")

    def _start_stack(self) -> None:
        from forge.reference_stack import stack as stack_lib

        c = self.config
        replicas = int(c.get("replicas", 2))
        timeout = self.resolve_shutdown_timeout(c.get("shutdown_timeout_seconds"))
        self.engine_shutdown_timeout = {i: timeout for i in range(replicas)}
        # Short path: HAProxy's admin socket path must fit a unix socket name (108 bytes).
        self.state_dir = Path(tempfile.mkdtemp(prefix="forge-chaos-"))
        plan = stack_lib.StackPlan(
            state_dir=self.state_dir, engine=STACK_ENGINES[self.engine], replicas=replicas,
            ports=stack_lib.Ports.free(replicas), exporter=bool(c.get("exporter", False)),
            scrape_interval_s=int(c.get("scrape_interval_seconds", 1)),
            evaluation_interval_s=int(c.get("scrape_interval_seconds", 1)),
            check_interval_ms=int(c.get("check_interval_ms", STACK_CHECK_INTERVAL_MS)),
            sim_args=simulator_flags(dict(c.get("simulator_options") or {})),
            shutdown_timeout_s=timeout,
            weights=c.get("weights"),  # e.g. [100, 0]: a canary with no traffic yet
            balance=str(c.get("balance", "leastconn")))  # roundrobin: weights are traffic shares
        if c.get("tp"):
            plan.tp = int(c["tp"])
        if c.get("vllm_args"):  # e.g. [--enforce-eager]: no torch.compile, a start a minute shorter on CPU
            plan.vllm_args = [str(a) for a in c["vllm_args"]]
        if c.get("alert_rules"):  # the committed rules, some with a short `for`/window so alerts come in seconds
            plan.rule_files = [short_rule_copy(stack_lib.DEFAULT_RULES, c["alert_rules"],
                                               self.state_dir / "lab-rules.yaml")]
        if c.get("model_dir"):
            plan.model_dir = Path(c["model_dir"])
        started = time.monotonic()
        self.log(f"starting the reference stack ({self.engine} x{replicas}) in {self.state_dir}")
        try:
            self.stack = stack_lib.up(plan, progress=self.log)
        except stack_lib.StackInputError as exc:
            raise InputError(f"lab: stack: {exc}") from None
        self.gateway = stack_lib.Gateway(self.stack)
        self.replicas = [StackReplica(self, i) for i in range(replicas)]
        self.journal.measurements["stack_start_seconds"] = round(time.monotonic() - started, 3)
        self.log(f"stack up in {time.monotonic() - started:.1f} s: gateway {self.stack.gateway_url}")

    def resolve_shutdown_timeout(self, value: int | str | None) -> int | None:
        """configuration.shutdown_timeout_seconds as whole seconds: a number, null (the engine's default), or
        `fit-notice`: the longest that fits an interruption notice (notice_seconds − safety_margin_seconds)."""
        if value != "fit-notice":
            return None if value is None else int(value)
        from forge.chaos.spot import DEFAULT_SAFETY_MARGIN_S, NOTICE_SECONDS, shutdown_timeout_for_notice

        notice = self.config.get("notice_seconds", NOTICE_SECONDS[self.config.get("provider", "aws")])
        return shutdown_timeout_for_notice(float(notice), 0.0,
                                           float(self.config.get("safety_margin_seconds", DEFAULT_SAFETY_MARGIN_S)))

    def engine_command(self, index: int, previous: list[str]) -> tuple[list[str], dict[str, str] | None]:
        """The command (and environment) that starts replica `index` again, with its current shutdown timeout."""
        import os

        timeout = self.engine_shutdown_timeout.get(index)
        flag = "--shutdown-timeout" if self.engine == "vllm" else "--shutdown-timeout-s"
        command = list(previous)
        if flag in command:
            at = command.index(flag)
            del command[at:at + 2]
        if timeout is not None:
            command += [flag, str(timeout)]
        if self.engine != "vllm":
            return command, None
        recorded = self.stack.component(f"engine-s{index}").env
        if recorded:  # what stack.up set for this engine (offline hub, KV cache size, its own cores)
            return command, dict(os.environ, **recorded)
        from forge.reference_stack.vllm_engine import EngineConfig

        # The environment stack.up gave it (offline hub, KV cache size, thread binding); model and port unchanged.
        plan = self.stack.plan
        env = EngineConfig(model_dir=Path("."), port=0, tensor_parallel_size=plan["tp"],
                           kv_cache_space_gib=1).environment(dict(os.environ))
        return command, env

    def server_stats(self) -> list[dict[str, Any]]:
        """HAProxy's `show stat` rows for the backend's servers (name, status, scur, weight, ...), numbers as int."""
        return [{"name": values["svname"], "status": values.get("status"),
                 **{k: int(values[k]) for k in ("scur", "stot", "weight", "hrsp_5xx", "eresp", "econ")
                    if (values.get(k) or "").isdigit()}}
                for values in self.gateway.stat_rows()]

    def wait_server_status(self, server: str, status: str = "UP", timeout_s: float = 20.0) -> float:
        """Wait until HAProxy reports `server` in `status` (UP, DOWN, DRAIN, MAINT); returns the seconds waited."""
        return self.gateway.wait_server_status(server, status, timeout_s)

    def variables(self) -> dict[str, Any]:
        variables = {**self.config, **{f"replica_{r.index}_url": r.url for r in self.replicas}}
        if self.stack is not None:
            variables.update(gateway_url=self.stack.gateway_url, prometheus_url=self.stack.prometheus_url,
                             alertmanager_url=self.stack.alertmanager_url,
                             haproxy_socket=str(self.stack.haproxy_socket))
            for r in self.replicas:
                variables[f"replica_{r.index}_server"] = r.server
                variables[f"replica_{r.index}_pid"] = r.pid
        return variables

    def on_close(self, closer: Callable[[], Any]) -> None:
        """Run `closer` at teardown (before the load and the engines stop), whatever happened."""
        self._closers.append(closer)

    def load_records(self) -> list[dict]:
        """Every load request finished so far: forge.load's result fields, `replica` (or "gateway"), `finished_at`."""
        return list(self._load_records)

    # ---- watchdog
    def start_watchdog(self) -> None:
        targets = [WatchTarget(r.name, metrics_url(r.url)) for r in self.replicas]
        # scrape_timeout_seconds: a failed scrape resets the stall clock, so a CPU-starved engine needs a longer one.
        self.watchdog_loop = WatchdogLoop(targets, self.watchdog, on_transition=self._on_transition,
                                          poll_interval_s=float(self.config.get("poll_interval_seconds", 1.0)),
                                          scrape_timeout_s=float(self.config.get("scrape_timeout_seconds", 2.0)))
        self.watchdog_loop.start()

    def _on_transition(self, transition: Transition) -> None:
        self.log(f"watchdog: {transition.replica} {transition.previous} -> {transition.state} ({transition.reason})")
        if transition.state == HUNG and self.supervisor is not None:
            # configuration.supervisor: it drains the replica at the gateway and restarts it (every hang, not only
            # the first); the lab's own remediation stands aside.
            self.supervisor.report_hung(transition.replica, transition.reason)
        if transition.state != HUNG or transition.replica in self.detected_at:
            return
        self.detected_at[transition.replica] = transition.at
        # The watchdog's remediation restarts the replica (no drain here, in either lab); the restart runs on its own
        # thread so the watchdog keeps watching the other replicas meanwhile.
        if self.supervisor is None and self.config.get("remediation", "restart") == "restart":
            self._remediation = threading.Thread(target=self._restart, args=(transition.replica,), daemon=True)
            self._remediation.start()
        else:
            self.remediation_done.set()

    def start_supervisor(self) -> None:
        """configuration.supervisor (stack lab; a mapping of forge.chaos.supervisor.OPTIONS, {} for the defaults):
        restart replicas that exit, fail /health, are declared hung by the watchdog or get a GPU alert."""
        if self.config.get("supervisor") is None:
            return
        from forge.chaos.supervisor import Supervisor

        self.supervisor = Supervisor.for_lab(self, self.config["supervisor"]).start()
        self.on_close(self.supervisor.stop)

    def _restart(self, name: str) -> None:
        started = time.monotonic()
        try:
            next(r for r in self.replicas if r.name == name).restart()
            self.journal.measurements["restart_seconds"] = round(time.monotonic() - started, 3)
            self.log(f"restarted {name} in {time.monotonic() - started:.1f} s")
        except Exception as exc:
            self.remediation_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.remediation_done.set()

    # ---- load
    def start_load(self) -> None:
        """Constant-rate streaming load on every replica, in its own thread and event loop, bounded in time."""
        ready = threading.Event()
        self._load_thread = threading.Thread(target=lambda: asyncio.run(self._load_main(ready)), name="forge-chaos-load",
                                             daemon=True)
        self._load_thread.start()
        if not ready.wait(ENGINE_START_TIMEOUT_S):
            raise RuntimeError("the load did not start within 20 s")

    async def _load_main(self, ready: threading.Event) -> None:
        from forge.load.prompts import LengthDistribution, PromptFactory, calibrate
        from forge.load.runner import LiveStats, RunOptions, plan_rate, run_plan

        self._load_loop, self._load_stop = asyncio.get_running_loop(), asyncio.Event()
        c = self.config
        model = (self.config.get("simulator_options") or {}).get("model", "tiny")
        timeout = float(c.get("request_timeout_seconds", 30))

        class Collector:  # run_plan's writer: keep records in memory, tagged with their replica
            def __init__(self, replica: str, sink: list[dict]):
                self.replica, self.sink = replica, sink

            def write(self, result) -> None:
                # finished_at: when the outcome was known (a lost request is lost at that moment).
                self.sink.append({**result.as_dict(), "replica": self.replica, "finished_at": time.time()})

        per_replica = float(c.get("load_rate_per_replica", 4))
        if self.stack is not None:  # one stream through the gateway: HAProxy picks the replica
            targets = [("gateway", self.stack.gateway_url, float(c.get("load_rate", per_replica * len(self.replicas))))]
        else:
            targets = [(r.name, r.url, per_replica) for r in self.replicas]
        # httpx only to calibrate prompts against each target's /tokenize; run_plan sends with its own aiohttp session.
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0)) as client:
            calibrations = [await calibrate(client, url, model, "completions") for _, url, _ in targets]
        runs = []
        for seed, ((name, url, rate), calibration) in enumerate(zip(targets, calibrations)):
            plan = plan_rate(arrival="constant", rate=rate, burstiness=1.0,
                             duration_s=float(c.get("load_max_seconds", 60)), max_requests=1000,
                             prompt_lengths=LengthDistribution.parse(f"fixed:{c.get('load_prompt_tokens', 32)}", "load_prompt_tokens"),
                             output_lengths=LengthDistribution.parse(f"fixed:{c.get('load_output_tokens', 256)}", "load_output_tokens"),
                             seed=seed)
            options = RunOptions(base_url=url, model=model, request_timeout_s=timeout)
            prompts = PromptFactory(calibration, seed=seed)
            runs.append(run_plan(plan, prompts, options, Collector(name, self._load_records), stop=self._load_stop,
                                 stats=LiveStats()))
        ready.set()
        await asyncio.gather(*runs)

    def stop_load(self) -> dict[str, Any]:
        if self._load_result is not None:
            return self._load_result
        if self._load_loop is not None and self._load_stop is not None and not self._load_loop.is_closed():
            try:
                self._load_loop.call_soon_threadsafe(self._load_stop.set)
            except RuntimeError:
                pass  # the loop already ended: the plan finished on its own
        if self._load_thread is not None:
            self._load_thread.join(timeout=30)
        records = list(self._load_records)
        by_replica: dict[str, Counter] = {}
        for record in records:
            by_replica.setdefault(record["replica"], Counter())[record["outcome"]] += 1
        self._load_result = {"requests": len(records), "outcomes": dict(Counter(r["outcome"] for r in records)),
                             "outcomes_by_replica": {k: dict(v) for k, v in sorted(by_replica.items())}}
        self.journal.load = self._load_result
        return self._load_result

    # ---- teardown
    def close(self) -> list[str]:
        """Stop everything the lab started, whatever state it is in; returns what failed to stop (one line each)."""
        problems = []
        def stop_remediation() -> None:
            if self._remediation is not None:
                self._remediation.join(timeout=2 * ENGINE_START_TIMEOUT_S)

        if self.state_dir is not None:
            engines = [self._stop_stack]  # every process of the stack, by the pids its state file records
        else:
            engines = [functools.partial(r.stop, final=True) for r in self.replicas]
        for step in (*reversed(self._closers), lambda: self.watchdog_loop and self.watchdog_loop.stop(),
                     stop_remediation, self.stop_load, *engines):
            try:
                step()
            except Exception as exc:  # keep stopping the rest
                problems.append(f"{type(exc).__name__}: {exc}")
        return problems

    def _stop_stack(self) -> None:
        from forge.reference_stack import stack as stack_lib

        for r in self.replicas:  # no restart may start an engine once the stack goes down
            with r._lock:
                r._closed = True
        try:
            stack_lib.down(self.state_dir)
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------- the runner
def _call_provider(lab: Lab, activity: dict[str, Any]) -> Any:
    provider = substitute(activity.get("provider") or {}, lab.variables())
    if provider["type"] == "http":
        url = provider["url"]
        if not is_loopback_url(url):
            raise ValueError(f"http probe {url}: not loopback — probes reach only what the lab started")
        response = httpx.request(provider.get("method", "GET"), url, timeout=float(provider.get("timeout", 5)))
        return {"status": response.status_code, "body": response.text[:200]}
    module = importlib.import_module(provider["module"])
    return getattr(module, provider["func"])(lab, **(provider.get("arguments") or {}))


def _run_activity(lab: Lab, activity: dict[str, Any], is_hypothesis_probe: bool = False) -> ActivityRecord:
    record = record_activity(activity, lambda: _call_provider(lab, activity))
    if is_hypothesis_probe:
        record.tolerance_met = record.status == "succeeded" and within_tolerance(record.output, activity.get("tolerance"))
    lab.log(f"{activity.get('type', 'activity')} {activity.get('name')}: {record.status}"
            + (f", tolerance {'met' if record.tolerance_met else 'NOT met'}" if is_hypothesis_probe else "")
            + (f" ({record.exception})" if record.exception else ""))
    return record


def _hypothesis(lab: Lab, experiment: dict[str, Any], phase: str) -> bool:
    probes = (experiment.get("steady-state-hypothesis") or {}).get("probes") or []
    return lab.journal.set_steady_state(phase, [_run_activity(lab, p, True) for p in probes])


def run_experiment(experiment: dict[str, Any], journal_path: Path | None = None, *,
                   overrides: dict[str, Any] | None = None, log: Callable[[str], None] = lambda m: None) -> Journal:
    config = {**experiment.get("configuration", {}), **(overrides or {})}
    replicas = config.get("replicas", 2)
    if not isinstance(replicas, int) or not 1 <= replicas <= 8:
        raise InputError(f"configuration.replicas {replicas!r}: use 1-8 (each is a process on this machine)")
    poll, stall = float(config.get("poll_interval_seconds", 1.0)), float(config.get("stall_seconds", 30))
    if not 0 < poll <= stall / 2:
        raise InputError(f"poll_interval_seconds {poll:g}: must be > 0 and at most half of stall_seconds ({stall:g}) "
                         "so a stall is seen by at least two scrapes")
    lab_kind = config.get("lab", "replicas")
    if lab_kind not in LAB_KINDS:
        raise InputError(f"configuration.lab {lab_kind!r}: use replicas (simulators addressed directly) or stack "
                         "(the reference stack behind HAProxy)")
    if lab_kind == "stack" and config.get("engine", "simulator") not in STACK_ENGINES:
        raise InputError(f"configuration.engine {config.get('engine')!r}: use simulator or vllm")
    if lab_kind == "replicas" and config.get("engine", "simulator") != "simulator":
        raise InputError(f"configuration.engine {config.get('engine')!r}: the replicas lab starts simulator "
                         "replicas only — use engine: simulator, or lab: stack for vllm")
    timeout = config.get("shutdown_timeout_seconds")
    if timeout not in (None, "fit-notice") and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                                or timeout < 0):
        raise InputError(f"configuration.shutdown_timeout_seconds {timeout!r}: use whole seconds >= 0 (vLLM's "
                         "--shutdown-timeout), fit-notice, or null for the engine's default")
    if config.get("supervisor") is not None:
        from forge.chaos.supervisor import check_options

        check_options(config["supervisor"], lab_kind)
    journal = Journal(experiment={**experiment, "configuration": config})
    lab = Lab(config, journal, log=log)
    status = "completed"
    try:
        try:
            lab.start_engines()
            lab.start_watchdog()
            lab.start_supervisor()
            lab.start_load()
            # Let the load reach every replica before judging the steady state.
            time.sleep(float(config.get("warmup_seconds", 1.0)))
            if not _hypothesis(lab, experiment, "before"):
                status = "failed"
                journal.notes.append("steady state not met before the method: method skipped")
            else:
                for activity in experiment.get("method") or []:
                    record = _run_activity(lab, activity)
                    journal.run.append(record)
                    if record.status == "failed":
                        status = "failed"
                        break
                if status == "completed":
                    journal.deviated = not _hypothesis(lab, experiment, "after")
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except InputError:
            status = "aborted"
            raise
        except Exception as exc:
            status = "aborted"
            journal.notes.append(f"aborted: {type(exc).__name__}: {exc}")
        finally:
            for activity in experiment.get("rollbacks") or []:
                journal.rollbacks.append(_run_activity(lab, activity))
    finally:
        problems = lab.close()
        journal.notes.extend(f"teardown: {p}" for p in problems)
        journal.measurements.setdefault("detection_seconds", None)
        journal.measurements.setdefault("recovery_seconds", None)
        # null unless an activity drained a replica at the gateway (the bare lab has none).
        journal.measurements.setdefault("drain_seconds", None)
        journal.measurements["stall_seconds"] = lab.watchdog.stall_seconds
        journal.measurements["poll_interval_seconds"] = float(config.get("poll_interval_seconds", 1.0))
        journal.measurements["watchdog_events"] = [
            {"replica": t.replica, "state": t.state, "previous": t.previous, "reason": t.reason,
             "seconds_since_start": round(t.at - journal._started, 3)}
            for t in (lab.watchdog_loop.transitions() if lab.watchdog_loop else [])]
        journal.measurements["replicas"] = [{"name": r.name, "url": r.url} for r in lab.replicas]
        journal.measurements["lab"] = lab.kind
        if lab.stack is not None:
            for entry, r in zip(journal.measurements["replicas"], lab.replicas):
                entry["server"] = r.server
            journal.measurements["gateway_url"] = lab.stack.gateway_url
        journal.finish(status)
        if journal_path is not None:
            journal.write(journal_path)
    return journal
