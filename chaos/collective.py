"""Collective-hang drill: a torch.distributed all-reduce loop over N ranks, one rank SIGSTOPped, detected by Forge's
progress watchdog and by torch's own timeout — both timed from the same stop.

    python -m forge.chaos.collective drill --ranks 2 --stall-seconds 10 --backend auto --torch-timeout-seconds 60
    forge chaos collective-drill ...            (the same drill)

Why: a stopped tensor-parallel worker leaves its peers blocked inside a collective, their processes alive and their
health endpoints green; only "work outstanding, no progress" shows it. Each rank here exposes exactly that on its own
/metrics (127.0.0.1): `forge_collective_iterations_total` (a counter: all-reduces completed) and
`forge_collective_in_collective` (a gauge: 1 while the rank waits inside one). The drill feeds them to
`forge.chaos.watchdog.ProgressWatchdog` as (running, progress counter) — the very decision the engine watchdog makes —
and meanwhile waits for torch's own detection: gloo's collective timeout error, or for NCCL ProcessGroupNCCL's
watchdog (`TORCH_NCCL_ASYNC_ERROR_HANDLING=1`) / blocking wait (`TORCH_NCCL_BLOCKING_WAIT=1`) failing the collective
after the process group's `timeout=` (the process may also be aborted: its exit counts as the detection then).

The worker half (`... worker`) imports only the standard library and torch, so it runs under any interpreter that has
torch (`--worker-python`: .venv-vllm locally, the GPU machine's python3) as a plain script; the drill half needs Forge.
Times are CLOCK_MONOTONIC, which Linux shares between processes, so a worker's error time and the drill's stop time
compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKENDS = ("auto", "gloo", "nccl")
ITERATIONS_METRIC = "forge_collective_iterations_total"
IN_COLLECTIVE_METRIC = "forge_collective_in_collective"
EXIT_COLLECTIVE_ERROR = 3
EXIT_ORPHANED = 4
# Multicast NVLink can take a shared host's GPUs out of service (the device machine's KINDS.md): always off.
NCCL_SAFETY_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# torch's own hang detection for NCCL: the watchdog thread aborts timed-out collectives, a blocking wait raises.
TORCH_NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_BLOCKING_WAIT": "1"}


# ============================================================================================== worker (stdlib+torch)
class _Progress:
    """What a rank exposes: iterations completed and whether it is inside a collective now."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.backend = "starting"
        self.iterations = 0
        self.in_collective = 0
        self.lock = threading.Lock()

    def page(self) -> str:
        with self.lock:
            labels = f'rank="{self.rank}",backend="{self.backend}"'
            return (f"# HELP {ITERATIONS_METRIC} All-reduces this rank completed.\n"
                    f"# TYPE {ITERATIONS_METRIC} counter\n"
                    f"{ITERATIONS_METRIC}{{{labels}}} {self.iterations}\n"
                    f"# HELP {IN_COLLECTIVE_METRIC} 1 while this rank waits inside a collective (work outstanding).\n"
                    f"# TYPE {IN_COLLECTIVE_METRIC} gauge\n"
                    f"{IN_COLLECTIVE_METRIC}{{{labels}}} {self.in_collective}\n"
                    f"# HELP forge_collective_world_size Ranks in the process group.\n"
                    f"# TYPE forge_collective_world_size gauge\n"
                    f"forge_collective_world_size{{{labels}}} {self.world_size}\n")


def _serve_metrics(progress: _Progress, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = progress.page().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes every half second would drown the rank's log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _emit(event: str, **fields) -> None:
    """One JSON line on stdout: the drill reads these (ready, collective_error, ...)."""
    sys.stdout.write(json.dumps({"event": event, "at": time.monotonic(), **fields}) + "\n")
    sys.stdout.flush()


def _exit_when_orphaned(parent: int) -> None:
    # Belt and braces: the drill kills its ranks, but if the drill itself is killed a rank must not run on.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(EXIT_ORPHANED)


def resolve_backend(requested: str, world_size: int) -> str:
    """nccl when torch sees one GPU per rank and was built with NCCL; gloo otherwise."""
    import torch
    import torch.distributed as dist

    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def run_worker(args: argparse.Namespace) -> int:
    import datetime as dt

    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    progress = _Progress(args.rank, args.world_size)
    server = _serve_metrics(progress, args.metrics_port)
    _emit("metrics", port=server.server_address[1], pid=os.getpid())

    import torch
    import torch.distributed as dist

    backend = resolve_backend(args.backend, args.world_size)
    with progress.lock:
        progress.backend = backend
    device = torch.device("cpu")
    gpu_name = None
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < args.world_size or not dist.is_nccl_available():
            _emit("startup_error", rank=args.rank, error=f"backend nccl needs one GPU per rank and a torch built with "
                  f"NCCL: torch {torch.__version__} sees {gpus} GPU(s) for {args.world_size} ranks, NCCL "
                  f"{'available' if dist.is_nccl_available() else 'not built in'} — use --backend gloo or auto")
            return 2
        device = torch.device("cuda", args.rank)
        torch.cuda.set_device(device)
        gpu_name = torch.cuda.get_device_name(device)
    dist.init_process_group(backend, init_method=args.init_method, rank=args.rank, world_size=args.world_size,
                            timeout=dt.timedelta(seconds=args.timeout_seconds))
    nccl_version = None
    if backend == "nccl":
        nccl_version = ".".join(str(part) for part in torch.cuda.nccl.version())
    contribution = torch.full((args.numel,), float(args.rank + 1), device=device)
    expected = args.world_size * (args.world_size + 1) / 2
    buffer = torch.empty_like(contribution)
    _emit("ready", rank=args.rank, backend=backend, device=str(device), gpu_name=gpu_name,
          torch_version=torch.__version__, nccl_version=nccl_version, timeout_seconds=args.timeout_seconds,
          torch_env={k: os.environ[k] for k in sorted(os.environ) if k.startswith(("TORCH_NCCL_", "NCCL_"))})

    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        buffer.copy_(contribution)
        with progress.lock:
            progress.in_collective = 1
        try:
            dist.all_reduce(buffer, async_op=True).wait()  # NCCL with TORCH_NCCL_BLOCKING_WAIT=1: raises after the PG timeout
            got = float(buffer[0].item())   # on a GPU this also waits for the kernel
        except Exception as exc:
            # The rank is dead in the water: say so and exit without teardown (destroying a group whose peer is
            # stopped can block as well).
            _emit("collective_error", rank=args.rank, iteration=progress.iterations + 1,
                  error_type=type(exc).__name__, error=" ".join(str(exc).split())[:600])
            os._exit(EXIT_COLLECTIVE_ERROR)
        if abs(got - expected) > 1e-3:
            _emit("wrong_sum", rank=args.rank, iteration=progress.iterations + 1, got=got, expected=expected)
            os._exit(EXIT_COLLECTIVE_ERROR)
        with progress.lock:
            progress.in_collective = 0
            progress.iterations += 1
        if args.interval_seconds > 0:
            time.sleep(args.interval_seconds)
    _emit("done", rank=args.rank, iterations=progress.iterations)
    dist.destroy_process_group()
    server.shutdown()
    return 0


def worker_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="one rank of the all-reduce loop (started by the drill)")
    w.add_argument("--rank", type=int, required=True)
    w.add_argument("--world-size", type=int, required=True)
    w.add_argument("--init-method", required=True, help="file:///path or tcp://127.0.0.1:PORT")
    w.add_argument("--backend", choices=BACKENDS, default="auto")
    w.add_argument("--metrics-port", type=int, default=0, help="0: any free port (reported on stdout)")
    w.add_argument("--timeout-seconds", type=float, default=60.0, help="the process group's timeout=")
    w.add_argument("--numel", type=int, default=65536, help="float32 elements per all-reduce")
    w.add_argument("--interval-seconds", type=float, default=0.01, help="pause between all-reduces")
    w.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long")


# ================================================================================================ the drill (Forge)
DEFAULT_RANKS = 2
MAX_RANKS = 64
DEFAULT_STALL_S = 10.0
DEFAULT_POLL_S = 0.5
DEFAULT_TORCH_TIMEOUT_S = 60.0
WARMUP_ITERATIONS = 20
STARTUP_TIMEOUT_S = 120.0   # importing torch and NCCL's first init can take a while on a loaded machine
AFTER_TIMEOUT_GRACE_S = 30.0


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


class RankProcess:
    """One rank the drill started: its own session (so signals reach it alone), stdout events read on a thread."""

    def __init__(self, rank: int, command: list[str], env: dict[str, str], log_path):
        import subprocess

        self.rank = rank
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                                     env=env, start_new_session=True, text=True)
        self.pid = self.proc.pid
        self.events: list[dict] = []
        self.exited_at: float | None = None
        self.stopped = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"rank-{rank}-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # torch may print plain lines on stdout; only our JSON lines are events
            if isinstance(event, dict) and "event" in event:
                with self._lock:
                    self.events.append(event)
        self.proc.wait()
        with self._lock:
            self.exited_at = time.monotonic()

    def event(self, name: str) -> dict | None:
        with self._lock:
            return next((e for e in self.events if e["event"] == name), None)

    @property
    def metrics_url(self) -> str | None:
        event = self.event("metrics")
        return f"http://127.0.0.1:{event['port']}/metrics" if event else None

    def exit_info(self) -> tuple[float, int] | None:
        with self._lock:
            if self.exited_at is None:
                return None
            return self.exited_at, self.proc.returncode

    def stderr_tail(self, lines: int = 8) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [_one_line(line) for line in text.splitlines() if line.strip()][-lines:]

    def signal(self, sig: int) -> None:
        """Only while the process we started has not been reaped: its pid can't belong to anyone else yet."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):  # a stopped process must be continued to die promptly
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._reader.join(timeout=5)
        self._log.close()


def _rank_sample(text: str):
    """The watchdog's (running, progress counter) from a rank's page: in_collective and iterations_total."""
    from prometheus_client.parser import text_string_to_metric_families

    from forge.chaos.watchdog import ProgressSample

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (ITERATIONS_METRIC, IN_COLLECTIVE_METRIC):
                values[s.name] = values.get(s.name, 0.0) + s.value
    if ITERATIONS_METRIC not in values or IN_COLLECTIVE_METRIC not in values:
        raise ValueError(f"no {ITERATIONS_METRIC} or {IN_COLLECTIVE_METRIC} on the page")
    return ProgressSample(requests_running=values[IN_COLLECTIVE_METRIC], generation_tokens=values[ITERATIONS_METRIC])


class _Monitor:
    """Scrapes ranks, feeds the ProgressWatchdog, and keeps every transition with its time."""

    def __init__(self, ranks: list[RankProcess], stall_seconds: float, poll_interval_s: float):
        import httpx

        from forge.chaos.watchdog import ProgressWatchdog

        self.ranks = ranks
        self.watchdog = ProgressWatchdog(stall_seconds)
        self.poll_interval_s = poll_interval_s
        self.client = httpx.Client(timeout=max(0.2, min(1.0, poll_interval_s)))
        self.transitions: list = []
        self.last_samples: dict[int, object] = {}

    def poll(self, ranks: list[RankProcess]) -> None:
        import httpx

        for rank in ranks:
            name, url = f"rank-{rank.rank}", rank.metrics_url
            if url is None:
                continue
            try:
                response = self.client.get(url)
                response.raise_for_status()
                sample = _rank_sample(response.text)
                self.last_samples[rank.rank] = sample
                transition = self.watchdog.observe(name, sample, time.monotonic())
            except (httpx.HTTPError, ValueError) as exc:
                transition = self.watchdog.unreachable(name, time.monotonic(), _one_line(f"{type(exc).__name__}: {exc}", 200))
            if transition is not None:
                self.transitions.append(transition)

    def hung_at(self, rank: RankProcess, after: float) -> float | None:
        from forge.chaos.watchdog import HUNG

        return next((t.at for t in self.transitions
                     if t.replica == f"rank-{rank.rank}" and t.state == HUNG and t.at >= after), None)

    def close(self) -> None:
        self.client.close()


def _last_words(rank: RankProcess) -> str:
    """Why a rank ended: its own error event if it sent one, else the last line of its stderr."""
    for name in ("startup_error", "collective_error", "wrong_sum"):
        event = rank.event(name)
        if event is not None:
            return _one_line(json.dumps({k: v for k, v in event.items() if k != "at"}, ensure_ascii=False))
    return (rank.stderr_tail(1) or ["(no output)"])[0]


def torch_detection(rank: RankProcess, stopped_at: float) -> dict | None:
    """When and how torch gave up on the stopped peer: the collective's error, or else the process's exit."""
    error = rank.event("collective_error")
    if error is not None and error["at"] >= stopped_at:
        return {"seconds": round(error["at"] - stopped_at, 3), "how": "collective raised",
                "error": f"{error['error_type']}: {error['error']}"}
    exited = rank.exit_info()
    if exited is not None and exited[0] >= stopped_at:
        at, code = exited
        how = f"process exited (signal {-code})" if code < 0 else f"process exited (code {code})"
        # NCCL's watchdog logs why it aborted among other lines; prefer the line that names the timeout.
        tail = rank.stderr_tail(40)
        named = [line for line in tail if re.search(r"time[d ]?\s?out|watchdog", line, re.IGNORECASE)]
        return {"seconds": round(at - stopped_at, 3), "how": how, "error": (named or tail or [""])[-1]}
    return None


def _worker_command(python: str, rank: int, world_size: int, init_method: str, backend: str,
                    timeout_s: float, max_seconds: float) -> list[str]:
    return [python, "-u", os.path.abspath(__file__), "worker", "--rank", str(rank), "--world-size", str(world_size),
            "--init-method", init_method, "--backend", backend, "--timeout-seconds", f"{timeout_s:g}",
            "--max-seconds", f"{max_seconds:g}"]


def validate(ranks: int, stall_seconds: float, poll_interval_s: float, backend: str, torch_timeout_s: float,
             stop_rank: int | None, worker_python: str) -> None:
    import shutil
    import subprocess

    from forge.chaos.watchdog import MIN_STALL_SECONDS
    from forge.errors import InputError

    problems = []
    if not 2 <= ranks <= MAX_RANKS:
        problems.append(f"--ranks {ranks}: use 2 to {MAX_RANKS} (a collective needs at least 2; one process a rank)")
    if backend not in BACKENDS:
        problems.append(f"--backend {backend!r}: use {', '.join(BACKENDS)}")
    if stall_seconds < MIN_STALL_SECONDS:
        problems.append(f"--stall-seconds {stall_seconds:g}: must be >= {MIN_STALL_SECONDS:g}")
    if poll_interval_s <= 0 or poll_interval_s * 2 > stall_seconds:
        problems.append(f"--poll-interval {poll_interval_s:g}: must be > 0 and at most half of --stall-seconds")
    if torch_timeout_s <= 0:
        problems.append(f"--torch-timeout-seconds {torch_timeout_s:g}: must be > 0 (torch's default is 600 for NCCL)")
    if stop_rank is not None and not 0 <= stop_rank < ranks:
        problems.append(f"--stop-rank {stop_rank}: must be between 0 and {ranks - 1}")
    if not (os.path.isfile(worker_python) and os.access(worker_python, os.X_OK)) and shutil.which(worker_python) is None:
        problems.append(f"--worker-python {worker_python}: not an executable — give an interpreter that has torch "
                        "(e.g. .venv-vllm/bin/python)")
    elif subprocess.run([worker_python, "-c", "import importlib.util, sys; "
                         "sys.exit(importlib.util.find_spec('torch') is None)"],
                        stdin=subprocess.DEVNULL, capture_output=True, timeout=60).returncode != 0:
        problems.append(f"--worker-python {worker_python}: has no torch — give an interpreter that has it "
                        "(e.g. .venv-vllm/bin/python, built by `make vllm`)")
    if problems:
        raise InputError(problems)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_drill(ranks: int = DEFAULT_RANKS, stall_seconds: float = DEFAULT_STALL_S, poll_interval_s: float = DEFAULT_POLL_S,
              backend: str = "auto", torch_timeout_s: float = DEFAULT_TORCH_TIMEOUT_S, stop_rank: int | None = None,
              worker_python: str | None = None, journal_path=None, log=None):
    """Run the drill; returns the Journal (also written to `journal_path` when given). Every rank started here is
    killed before this returns, whatever happened."""
    import platform
    import tempfile
    from pathlib import Path

    from forge.chaos.journal import ActivityRecord, Journal, timestamp
    from forge.chaos.watchdog import HEALTHY

    worker_python = worker_python or sys.executable
    validate(ranks, stall_seconds, poll_interval_s, backend, torch_timeout_s, stop_rank, worker_python)
    victim_index = ranks - 1 if stop_rank is None else stop_rank
    say = log or (lambda message: None)
    bound = stall_seconds + 2 * poll_interval_s
    experiment = {
        "version": "1.0.0",
        "title": "A stopped rank hangs a torch.distributed all-reduce loop; Forge's progress watchdog and torch's own "
                 "timeout both detect it",
        "description": "N ranks all-reduce in a loop on 127.0.0.1; one rank is SIGSTOPped. The survivors wait inside "
                       "the collective with their iteration counters frozen: Forge's ProgressWatchdog must call them "
                       "hung within stall_seconds + 2 poll intervals; torch's process-group timeout fails the "
                       "collective later. Rollback: SIGCONT, then every rank is killed.",
        "tags": ["forge", "collective-hang", "watchdog", "torch.distributed"],
        "configuration": {"ranks": ranks, "stall_seconds": stall_seconds, "poll_interval_seconds": poll_interval_s,
                          "backend": backend, "torch_timeout_seconds": torch_timeout_s, "stop_rank": victim_index,
                          "worker_python": worker_python},
    }
    journal = Journal(experiment)
    workdir = Path(tempfile.mkdtemp(prefix="forge-collective-"))
    # Loopback only: gloo's pairs and NCCL's bootstrap sockets stay on lo (NCCL's data goes GPU to GPU anyway).
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo",
               **NCCL_SAFETY_ENV, **TORCH_NCCL_ENV)
    # Bounded: a rank ends itself after this long even if the drill were killed past its orphan check.
    max_seconds = STARTUP_TIMEOUT_S + stall_seconds + torch_timeout_s + AFTER_TIMEOUT_GRACE_S + 60
    procs: list[RankProcess] = []
    monitor = None
    status = "completed"
    # SIGTERM (a `timeout`, a CI job's cancel) must still reach the rollback: a SIGSTOPped rank left behind would
    # never run its own orphan check.
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)

    def activity(kind: str, name: str, start: str, started: float, ok: bool, output, error: str | None = None):
        # One function runs every step; `step` names which (Chaos Toolkit readers only need type and name).
        return ActivityRecord({"type": kind, "name": name, "provider": {"type": "python",
                               "module": "forge.chaos.collective", "func": "run_drill", "step": name}},
                              start, timestamp(), time.monotonic() - started, "succeeded" if ok else "failed",
                              output, error)

    try:
        init_method = f"file://{workdir / 'rendezvous'}"
        for r in range(ranks):
            procs.append(RankProcess(r, _worker_command(worker_python, r, ranks, init_method, backend,
                                                        torch_timeout_s, max_seconds),
                                     env, workdir / f"rank-{r}.log"))
        say(f"started {ranks} ranks (pids {', '.join(str(p.pid) for p in procs)}), backend {backend}")
        monitor = _Monitor(procs, stall_seconds, poll_interval_s)

        # ---- steady state: every rank ready, iterating, and healthy in the watchdog's eyes
        start, started = timestamp(), time.monotonic()
        deadline = started + STARTUP_TIMEOUT_S
        problem = None
        while True:
            monitor.poll(procs)
            dead = [p for p in procs if p.exit_info() is not None]
            if dead:
                problem = "; ".join(f"rank {p.rank} exited with {p.proc.returncode}: {_last_words(p)}" for p in dead)
                break
            samples = [monitor.last_samples.get(p.rank) for p in procs]
            if all(p.event("ready") for p in procs) and all(
                    s is not None and s.generation_tokens >= WARMUP_ITERATIONS for s in samples) and all(
                    monitor.watchdog.state(f"rank-{p.rank}") == HEALTHY for p in procs):
                break
            if time.monotonic() > deadline:
                problem = f"ranks not iterating within {STARTUP_TIMEOUT_S:g} s"
                break
            time.sleep(poll_interval_s)
        ready = [p.event("ready") or {} for p in procs]
        before = {p.rank: int(getattr(monitor.last_samples.get(p.rank), "generation_tokens", 0)) for p in procs}
        probe = activity("probe", "all-ranks-iterating", start, started, problem is None,
                         {"iterations": before, "watchdog": {f"rank-{p.rank}": monitor.watchdog.state(f"rank-{p.rank}")
                                                             for p in procs}}, problem)
        probe.tolerance_met = problem is None
        journal.set_steady_state("before", [probe])
        resolved_backend = next((r.get("backend") for r in ready if r.get("backend")), None)
        journal.measurements.update({
            "backend": resolved_backend, "world_size": ranks, "stopped_rank": victim_index,
            "stall_seconds": stall_seconds, "poll_interval_seconds": poll_interval_s,
            "detection_bound_seconds": bound, "torch_timeout_configured_seconds": torch_timeout_s,
            "gpu_names": [r.get("gpu_name") for r in ready if r.get("gpu_name")],
            "torch_version": next((r.get("torch_version") for r in ready if r.get("torch_version")), None),
            "nccl_version": next((r.get("nccl_version") for r in ready if r.get("nccl_version")), None),
            "torch_env": ready[0].get("torch_env", {}) if ready else {},
            "host": platform.node(), "iterations_before_stop": before,
        })
        if problem is not None:
            say(f"steady state not met: {problem}")
            status = "failed"
            return journal

        # ---- method: stop one rank, then wait for both detections on every survivor
        victim = procs[victim_index]
        survivors = [p for p in procs if p is not victim]
        start, started = timestamp(), time.monotonic()
        victim.signal(signal.SIGSTOP)
        victim.stopped = True
        stopped_at = time.monotonic()
        say(f"SIGSTOP rank {victim_index} (pid {victim.pid})")
        journal.run.append(activity("action", "sigstop-rank", start, started, True,
                                    {"rank": victim_index, "pid": victim.pid}))

        forge_deadline = stopped_at + max(bound, 0) + torch_timeout_s + AFTER_TIMEOUT_GRACE_S
        torch_deadline = stopped_at + torch_timeout_s + AFTER_TIMEOUT_GRACE_S

        def forge_done() -> bool:
            return all(monitor.hung_at(p, stopped_at) is not None or p.exit_info() is not None for p in survivors)

        def torch_done() -> bool:
            return all(torch_detection(p, stopped_at) is not None for p in survivors)

        def wait(until, deadline: float) -> None:
            while not until() and time.monotonic() < deadline:
                polled = time.monotonic()
                monitor.poll([p for p in survivors if p.exit_info() is None])
                # Same cadence as WatchdogLoop: the scrape's own time counts towards the interval.
                time.sleep(max(0.0, poll_interval_s - (time.monotonic() - polled)))

        start, started = timestamp(), time.monotonic()
        wait(forge_done, forge_deadline)
        forge = {p.rank: monitor.hung_at(p, stopped_at) for p in survivors}
        forge_seconds = {r: (round(at - stopped_at, 3) if at is not None else None) for r, at in forge.items()}
        detected = all(v is not None for v in forge_seconds.values())
        hung = [t for t in monitor.transitions if t.state == "hung" and t.at >= stopped_at]
        journal.run.append(activity(
            "probe", "forge-watchdog-detects-hang", start, started, detected,
            {"detection_seconds": forge_seconds,
             # The engine watchdog's words: "requests running" = in_collective, "generation tokens" = iterations.
             "signals": {"running": IN_COLLECTIVE_METRIC, "progress": ITERATIONS_METRIC},
             "transitions": [{"replica": t.replica, "state": t.state, "reason": t.reason,
                              "after_stop_seconds": round(t.at - stopped_at, 3)} for t in hung]},
            None if detected else "the progress watchdog did not call every surviving rank hung before it exited"))
        say(f"Forge watchdog: {forge_seconds} s after the stop (bound {bound:g} s)")

        start, started = timestamp(), time.monotonic()
        wait(torch_done, torch_deadline)
        torch_seen = {p.rank: torch_detection(p, stopped_at) for p in survivors}
        torch_ok = all(v is not None for v in torch_seen.values())
        journal.run.append(activity(
            "probe", "torch-timeout-detects-hang", start, started, torch_ok, torch_seen,
            None if torch_ok else f"torch did not fail the collective within {torch_timeout_s:g} + "
                                  f"{AFTER_TIMEOUT_GRACE_S:g} s"))
        say(f"torch: {({r: (v or {}).get('seconds') for r, v in torch_seen.items()})} s after the stop "
            f"(timeout {torch_timeout_s:g} s)")

        forge_max = max(v for v in forge_seconds.values()) if detected else None
        torch_max = max(v["seconds"] for v in torch_seen.values()) if torch_ok else None
        first = next((v for v in torch_seen.values() if v), None)
        journal.measurements.update({
            "detection_seconds": forge_max,
            "detection_seconds_by_rank": {str(r): v for r, v in forge_seconds.items()},
            "torch_timeout_detection_seconds": torch_max,
            "torch_timeout_detection_by_rank": {str(r): (v or {}).get("seconds") for r, v in torch_seen.items()},
            "torch_timeout_how": first["how"] if first else None,
            "torch_timeout_error": first["error"] if first else None,
            "forge_ahead_of_torch_seconds": (round(torch_max - forge_max, 3)
                                             if forge_max is not None and torch_max is not None else None),
        })
        journal.deviated = not (detected and torch_ok and forge_max <= bound)
        return journal
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except Exception as exc:
        status = "aborted"
        journal.notes.append(f"aborted: {type(exc).__name__}: {_one_line(str(exc))}")
        return journal
    finally:
        # ---- rollback: continue the stopped rank, kill every rank, check none is left
        start, started = timestamp(), time.monotonic()
        for p in procs:
            if p.stopped:
                try:
                    p.signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.kill()
        left = [p.pid for p in procs if p.proc.poll() is None]
        journal.rollbacks.append(activity("action", "resume-and-kill-ranks", start, started, not left,
                                          {"pids": [p.pid for p in procs], "still_running": left,
                                           "stderr_tail": {str(p.rank): p.stderr_tail(4) for p in procs}}))
        journal.measurements["processes_left"] = len(left)
        if monitor is not None:
            monitor.close()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        journal.finish(status)
        if journal_path is not None:
            journal.write(Path(journal_path))
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def summary(journal) -> str:
    m = journal.measurements
    return (f"status {journal.status}, deviated {str(journal.deviated).lower()}; backend {m.get('backend')}, "
            f"{m.get('world_size')} ranks, GPUs {m.get('gpu_names') or 'none'}; Forge watchdog "
            f"{m.get('detection_seconds')} s (stall {m.get('stall_seconds')} s, bound {m.get('detection_bound_seconds')} s); "
            f"torch timeout {m.get('torch_timeout_detection_seconds')} s (configured "
            f"{m.get('torch_timeout_configured_seconds')} s, {m.get('torch_timeout_how')}); processes left "
            f"{m.get('processes_left')}")


def drill_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("drill", help="start the ranks, stop one, time Forge's watchdog and torch's timeout")
    d.add_argument("--ranks", type=int, default=DEFAULT_RANKS)
    d.add_argument("--stall-seconds", type=float, default=DEFAULT_STALL_S)
    d.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_S)
    d.add_argument("--backend", default="auto", help="auto (nccl with one GPU per rank, else gloo), gloo or nccl")
    d.add_argument("--torch-timeout-seconds", type=float, default=DEFAULT_TORCH_TIMEOUT_S)
    d.add_argument("--stop-rank", type=int, default=None, help="rank to SIGSTOP (default: the last)")
    d.add_argument("--worker-python", default=None, help="interpreter with torch for the ranks (default: this one)")
    d.add_argument("--journal", default="collective-hang-journal.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge.chaos.collective", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker_parser(sub)
    drill_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "worker":
        return run_worker(args)
    from forge.console import error
    from forge.errors import InputError

    def say(message: str) -> None:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        sys.stdout.flush()

    try:
        journal = run_drill(args.ranks, args.stall_seconds, args.poll_interval, args.backend,
                            args.torch_timeout_seconds, args.stop_rank, args.worker_python, args.journal, say)
    except InputError as exc:
        for message in exc.messages:
            error(message)
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: ranks killed, journal written to {args.journal}\n")
        return 130
    say(summary(journal))
    say(f"journal: {args.journal}")
    return 0 if journal.status == "completed" and not journal.deviated else 1


if __name__ == "__main__":
    sys.exit(main())
