"""The progress watchdog: a replica is hung when requests are running but no output token comes out.

A stopped tensor-parallel worker (NCCL/collective hang) keeps vLLM's /health at 200 for minutes while
`num_requests_running` stays up and `generation_tokens_total` freezes (../shared/notes/vllm-cpu.md), so a liveness
probe never catches it. This watchdog reads each engine's /metrics through the signal catalog
(`forge_requests_running`, `forge_generation_tokens_total`), so it works for any catalog engine.

Pure logic (`ProgressWatchdog.observe`, fed samples and times) is kept apart from I/O (`WatchdogLoop`, which scrapes
and calls hooks), so the decision is unit-tested with a fake clock and real metric pages.

Detection bound: the last sample showing progress is at most one poll interval after the hang began, and the stall
is noticed at most one poll interval after `stall_seconds` have passed since it: detection <= stall + 2 intervals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from forge.errors import InputError
from forge.exporters.normalize import NormalizeError, normalize

RUNNING_SIGNAL = "forge_requests_running"
TOKENS_SIGNAL = "forge_generation_tokens_total"
DEFAULT_STALL_SECONDS = 30.0
MIN_STALL_SECONDS = 1.0
DEFAULT_POLL_INTERVAL_S = 1.0

HEALTHY, HUNG, UNREACHABLE = "healthy", "hung", "unreachable"


@dataclass(frozen=True)
class ProgressSample:
    """What the watchdog needs from one /metrics page: requests in the running batch and output tokens so far."""

    requests_running: float
    generation_tokens: float


def progress_sample(metrics_text: str, engine: str | None = None) -> ProgressSample:
    """Read a page through the catalog; InputError when the engine exposes no running gauge or token counter."""
    page = normalize(metrics_text, engine=engine)
    missing = [name for name in (RUNNING_SIGNAL, TOKENS_SIGNAL) if name not in page.families]
    if missing:
        raise InputError(f"engine {page.dialect!r}: its /metrics has no {' or '.join(missing)} — the progress "
                         "watchdog needs both (see `forge catalog` for what each engine provides)")
    # One page may carry several series (per model, per engine index); progress of any of them counts.
    running = sum(float(v) for v in page.families[RUNNING_SIGNAL].series.values())
    tokens = sum(float(v) for v in page.families[TOKENS_SIGNAL].series.values())
    return ProgressSample(running, tokens)


@dataclass(frozen=True)
class Transition:
    """A change of a replica's state, with when it happened (the watchdog's clock) and why."""

    replica: str
    state: str          # healthy | hung | unreachable
    previous: str
    at: float
    reason: str
    stalled_seconds: float = 0.0


@dataclass
class ReplicaProgress:
    state: str = HEALTHY
    last_tokens: float | None = None
    last_progress_at: float | None = None   # last time tokens moved, or nothing was running
    hung_since: float | None = None


class ProgressWatchdog:
    """Decides, sample by sample, whether each replica is healthy or hung. No I/O, no clock of its own."""

    def __init__(self, stall_seconds: float = DEFAULT_STALL_SECONDS):
        if stall_seconds < MIN_STALL_SECONDS:
            raise InputError(f"--stall-seconds {stall_seconds}: must be >= {MIN_STALL_SECONDS} (a few poll "
                             "intervals; 30 is the production default)")
        self.stall_seconds = stall_seconds
        self.replicas: dict[str, ReplicaProgress] = {}

    def state(self, replica: str) -> str:
        return self.replicas.get(replica, ReplicaProgress()).state

    def observe(self, replica: str, sample: ProgressSample, now: float) -> Transition | None:
        """Feed one sample taken at `now`; returns a Transition when the replica's state changes."""
        r = self.replicas.setdefault(replica, ReplicaProgress())
        previous = r.state
        if r.last_tokens is None or r.last_progress_at is None:
            reason = "first sample"
            progressed = True
        elif sample.generation_tokens < r.last_tokens:
            # A counter going down is a restarted process, not a stall: start a fresh baseline.
            reason, progressed = "token counter reset (engine restarted)", True
        elif sample.generation_tokens > r.last_tokens:
            reason, progressed = "generation tokens moving", True
        elif sample.requests_running <= 0:
            # Nothing running: nothing can be stuck (an idle engine is not hung).
            reason, progressed = "no requests running", True
        else:
            reason, progressed = "", False
        r.last_tokens = sample.generation_tokens
        if progressed:
            r.last_progress_at = now
            if r.state != HEALTHY:
                r.state, r.hung_since = HEALTHY, None
                return Transition(replica, HEALTHY, previous, now, reason)
            return None
        stalled = now - r.last_progress_at
        if r.state != HUNG and stalled >= self.stall_seconds:
            r.state, r.hung_since = HUNG, now
            return Transition(replica, HUNG, previous, now,
                              f"{sample.requests_running:g} request(s) running, generation tokens frozen at "
                              f"{sample.generation_tokens:g} for {stalled:.1f} s", stalled)
        return None

    def unreachable(self, replica: str, now: float, error: str) -> Transition | None:
        """A failed scrape: not a hang (the gateway's health check handles dead engines); forget the baseline."""
        r = self.replicas.setdefault(replica, ReplicaProgress())
        previous = r.state
        r.last_tokens = r.last_progress_at = None
        if r.state == UNREACHABLE:
            return None
        r.state, r.hung_since = UNREACHABLE, None
        return Transition(replica, UNREACHABLE, previous, now, error)


# ------------------------------------------------------------------------------------------------- I/O loop
Hook = Callable[[Transition], None]


@dataclass
class WatchTarget:
    """One engine: its name (e.g. the HAProxy server), the /metrics URL, and the catalog engine (None: detect)."""

    name: str
    metrics_url: str
    engine: str | None = None


def metrics_url(target_url: str) -> str:
    url = target_url.rstrip("/")
    return url if url.endswith("/metrics") else url + "/metrics"


@dataclass
class WatchdogLoop:
    """Scrapes every target each `poll_interval_s`, feeds the watchdog and calls the hook on each transition.

    Run it with `run()` (blocks until `stop()`) or `start()` (a daemon thread). Transitions are kept in `events`.
    Hooks run on the loop's thread; one that raises is recorded in `hook_errors` and does not stop watching.
    """

    targets: Sequence[WatchTarget]
    watchdog: ProgressWatchdog
    on_transition: Hook | None = None
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    scrape_timeout_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    events: list[Transition] = field(default_factory=list)
    hook_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poll_once(self, client: httpx.Client) -> list[Transition]:
        found = []
        for target in self.targets:
            try:
                response = client.get(target.metrics_url, timeout=self.scrape_timeout_s)
                response.raise_for_status()
                transition = self.watchdog.observe(target.name, progress_sample(response.text, target.engine),
                                                   self.clock())
            except (httpx.HTTPError, NormalizeError) as exc:
                transition = self.watchdog.unreachable(target.name, self.clock(), f"{type(exc).__name__}: {exc}"[:200])
            if transition is not None:
                found.append(transition)
                with self._lock:
                    self.events.append(transition)
                if self.on_transition is not None:
                    try:
                        self.on_transition(transition)
                    except Exception as exc:  # a failing drain must not blind the watchdog
                        self.hook_errors.append(f"{transition.replica} {transition.state}: {type(exc).__name__}: {exc}")
        return found

    def run(self) -> None:
        from forge.load.runner import is_loopback_url

        # An HTTP(S)_PROXY in the environment must not route loopback scrapes elsewhere (as the exporter's).
        with httpx.Client(trust_env=not all(is_loopback_url(t.metrics_url) for t in self.targets)) as client:
            while not self._stop.is_set():
                started = self.clock()
                self.poll_once(client)
                self._stop.wait(max(0.0, self.poll_interval_s - (self.clock() - started)))

    def start(self) -> WatchdogLoop:
        self._thread = threading.Thread(target=self.run, name="forge-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.scrape_timeout_s * len(self.targets) + self.poll_interval_s + 5)

    def transitions(self) -> list[Transition]:
        with self._lock:
            return list(self.events)


# --------------------------------------------------------------------------------------------- gateway hook
class HaproxyDrainHook:
    """Drains a hung replica at HAProxy (runtime API) and puts it back to ready when it makes progress again."""

    def __init__(self, socket_path: str, backend: str):
        from pathlib import Path
        from types import SimpleNamespace

        from forge.reference_stack.stack import Gateway

        # Gateway only needs the admin socket of a stack state; the watchdog may run beside any HAProxy.
        self.gateway = Gateway(SimpleNamespace(haproxy_socket=Path(socket_path)), backend=backend)
        self.actions: list[str] = []

    def __call__(self, transition: Transition) -> None:
        if transition.state == HUNG:
            self.gateway.drain(transition.replica)
            self.actions.append(f"drain {transition.replica}")
        elif transition.state == HEALTHY and transition.previous == HUNG:
            self.gateway.ready(transition.replica)
            self.actions.append(f"ready {transition.replica}")
