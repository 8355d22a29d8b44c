"""Run a Chaos Toolkit-shaped experiment against engines Forge starts itself, and journal it.

    journal = run_experiment(load_experiment("engine-hang"), Path("journal.json"), overrides={"stall_seconds": 5})

Order, as Chaos Toolkit: steady-state hypothesis before (a miss fails the run and skips the method), the method,
the hypothesis after (a miss marks the journal deviated), then the rollbacks — which ALWAYS run, after a failed
step or Ctrl-C too. Whatever the experiment says, the engines and the load the runner started are stopped at the
end (`Lab.close`). Safety: the lab only starts simulator replicas on 127.0.0.1 and sends load to them only.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import re
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
from forge.chaos.watchdog import HUNG, ProgressWatchdog, Transition, WatchdogLoop, WatchTarget, metrics_url
from forge.errors import InputError
from forge.load.runner import is_loopback_url

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
ALLOWED_MODULES = ("forge.chaos.actions",)   # experiments call Forge's activities, never arbitrary code
ENGINE_START_TIMEOUT_S = 20.0
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
            self.url = stack.enter_context(serve(port=self.port, in_subprocess=True,
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


@dataclass
class Lab:
    """What an experiment runs against: replicas, the bounded load on them, the watchdog watching them."""

    config: dict[str, Any]
    journal: Journal
    log: Callable[[str], None] = lambda message: None
    replicas: list[Replica] = field(default_factory=list)
    fault_injected_at: dict[str, float] = field(default_factory=dict)
    detected_at: dict[str, float] = field(default_factory=dict)
    remediation_done: threading.Event = field(default_factory=threading.Event)
    remediation_error: str | None = None

    def __post_init__(self) -> None:
        self.watchdog = ProgressWatchdog(float(self.config.get("stall_seconds", 30)))
        self._load_thread: threading.Thread | None = None
        self._load_loop: asyncio.AbstractEventLoop | None = None
        self._load_stop: asyncio.Event | None = None
        self._load_records: list[dict] = []
        self._load_result: dict[str, Any] | None = None
        self.watchdog_loop: WatchdogLoop | None = None
        self._remediation: threading.Thread | None = None

    # ---- engines
    def start_engines(self) -> None:
        for i in range(int(self.config.get("replicas", 2))):
            replica = Replica(i, dict(self.config.get("simulator_options") or {}))
            self.replicas.append(replica)
            replica.start()
            self.log(f"started {replica.name} at {replica.url}")

    def variables(self) -> dict[str, Any]:
        return {**self.config, **{f"replica_{r.index}_url": r.url for r in self.replicas}}

    # ---- watchdog
    def start_watchdog(self) -> None:
        targets = [WatchTarget(r.name, metrics_url(r.url)) for r in self.replicas]
        self.watchdog_loop = WatchdogLoop(targets, self.watchdog, on_transition=self._on_transition,
                                          poll_interval_s=float(self.config.get("poll_interval_seconds", 1.0)))
        self.watchdog_loop.start()

    def _on_transition(self, transition: Transition) -> None:
        self.log(f"watchdog: {transition.replica} {transition.previous} -> {transition.state} ({transition.reason})")
        if transition.state != HUNG or transition.replica in self.detected_at:
            return
        self.detected_at[transition.replica] = transition.at
        # No gateway in this lab (replicas are addressed directly), so there is nothing to drain; the restart runs
        # on its own thread so the watchdog keeps watching the other replicas meanwhile.
        if self.config.get("remediation", "restart") == "restart":
            self._remediation = threading.Thread(target=self._restart, args=(transition.replica,), daemon=True)
            self._remediation.start()
        else:
            self.remediation_done.set()

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
                self.sink.append({**result.as_dict(), "replica": self.replica})

        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0),
                                     limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)) as client:
            runs = []
            for r in self.replicas:
                plan = plan_rate(arrival="constant", rate=float(c.get("load_rate_per_replica", 4)), burstiness=1.0,
                                 duration_s=float(c.get("load_max_seconds", 60)), max_requests=1000,
                                 prompt_lengths=LengthDistribution.parse(f"fixed:{c.get('load_prompt_tokens', 32)}", "load_prompt_tokens"),
                                 output_lengths=LengthDistribution.parse(f"fixed:{c.get('load_output_tokens', 256)}", "load_output_tokens"),
                                 seed=r.index)
                prompts = PromptFactory(await calibrate(client, r.url, model, "completions"), seed=r.index)
                options = RunOptions(base_url=r.url, model=model, request_timeout_s=timeout)
                runs.append(run_plan(plan, prompts, options, Collector(r.name, self._load_records),
                                     stop=self._load_stop, stats=LiveStats(), client=client))
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

        for step in (lambda: self.watchdog_loop and self.watchdog_loop.stop(), stop_remediation, self.stop_load,
                     *[functools.partial(r.stop, final=True) for r in self.replicas]):
            try:
                step()
            except Exception as exc:  # keep stopping the rest
                problems.append(f"{type(exc).__name__}: {exc}")
        return problems


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
    if config.get("engine", "simulator") != "simulator":
        raise InputError(f"configuration.engine {config.get('engine')!r}: this runner starts simulator replicas "
                         "only — use engine: simulator")
    journal = Journal(experiment={**experiment, "configuration": config})
    lab = Lab(config, journal, log=log)
    status = "completed"
    try:
        try:
            lab.start_engines()
            lab.start_watchdog()
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
        # This lab has no gateway: the replicas are addressed directly, so nothing is drained (measured as null).
        journal.measurements.setdefault("drain_seconds", None)
        journal.measurements["stall_seconds"] = lab.watchdog.stall_seconds
        journal.measurements["poll_interval_seconds"] = float(config.get("poll_interval_seconds", 1.0))
        journal.measurements["watchdog_events"] = [
            {"replica": t.replica, "state": t.state, "previous": t.previous, "reason": t.reason,
             "seconds_since_start": round(t.at - journal._started, 3)}
            for t in (lab.watchdog_loop.transitions() if lab.watchdog_loop else [])]
        journal.measurements["replicas"] = [{"name": r.name, "url": r.url} for r in lab.replicas]
        journal.finish(status)
        if journal_path is not None:
            journal.write(journal_path)
    return journal
