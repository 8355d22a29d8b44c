"""The vLLM launcher's process handling (reference-stack/vllm_engine.py), fast and without vLLM.

A stand-in "python" executable takes vLLM's command line and behaves like the server in the ways the launcher
depends on: it logs, serves /health, and leaves a worker child in its process group. Real vLLM runs through
the same launcher in test_vllm_kv_cache.py.
"""

from __future__ import annotations

import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from forge.reference_stack.vllm_engine import (
    EngineConfig, EngineError, VllmEngine, free_port, parse_kv_cache_tokens, stop_all,
)

pytestmark = pytest.mark.timeout(60)

# Behaviour by env var: FAKE_MODE = serve | crash | silent; FAKE_IGNORE_TERM=1 makes leader and worker ignore
# SIGTERM (a hung engine). The worker writes its pid to FAKE_WORKER_PID so the test can check it is gone.
FAKE_SERVER = r'''
import http.server, os, signal, subprocess, sys, time
port = int(sys.argv[sys.argv.index("--port") + 1])
mode = os.environ.get("FAKE_MODE", "serve")
if os.environ.get("FAKE_IGNORE_TERM") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time, os\n"
    "if os.environ.get('FAKE_IGNORE_TERM') == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(300)"])
open(os.environ["FAKE_WORKER_PID"], "w").write(str(worker.pid))
print("args:", " ".join(sys.argv[1:]), flush=True)
print("(EngineCore pid=1) INFO [kv_cache_utils.py:2327] CPU KV cache size: 585,920 tokens, Maximum concurrency",
      flush=True)
if mode == "crash":
    print("RuntimeError: Engine core initialization failed.", flush=True)
    worker.kill()
    sys.exit(3)
if mode == "silent":
    time.sleep(300)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
'''


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    return directory


def make_engine(tmp_path: Path, fake_python: Path, model_dir: Path, monkeypatch, mode: str = "serve",
                ignore_term: bool = False, **config) -> VllmEngine:
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1" if ignore_term else "0")
    monkeypatch.setenv("FAKE_WORKER_PID", str(tmp_path / "worker.pid"))
    engine_config = EngineConfig(model_dir=model_dir, port=free_port(), python=fake_python, **config)
    return VllmEngine(engine_config, tmp_path / "logs" / "engine.log", startup_timeout_s=20, stop_grace_s=5)


def pid_alive(pid: int) -> bool:
    """Running or sleeping; a zombie waiting for init to reap it is dead (it holds no memory or port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def worker_pid(tmp_path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = (tmp_path / "worker.pid").read_text() if (tmp_path / "worker.pid").exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError("fake server wrote no worker pid")


def test_start_health_log_and_stop_take_the_whole_group(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engine = make_engine(tmp_path, fake_python, model_dir, monkeypatch, kv_cache_memory_bytes=300_000_000,
                         block_size=32)
    with engine:
        assert engine.startup_seconds is not None and engine.startup_seconds < 20
        assert engine.health_status() == 200
        assert engine.kv_cache_tokens() == 585_920
        assert "--host 127.0.0.1" in engine.log_text()
        assert "--kv-cache-memory-bytes 300000000 --block-size 32" in engine.log_text()
        worker = worker_pid(tmp_path)
        assert pid_alive(worker)
    assert engine.process.returncode is not None
    assert not pid_alive(worker)
    assert engine.health_status() is None
    assert engine.stop() == engine.process.returncode  # idempotent


def test_sigterm_ignored_escalates_to_sigkill_within_bound(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engine = make_engine(tmp_path, fake_python, model_dir, monkeypatch, ignore_term=True)
    engine.start()
    engine.wait_healthy()
    worker = worker_pid(tmp_path)
    started = time.monotonic()
    engine.stop(grace_s=1)
    assert time.monotonic() - started < 10
    assert engine.process.returncode == -9
    assert not pid_alive(worker)


def test_stop_all_overlaps_the_grace_periods(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engines = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        engines.append(make_engine(tmp_path / name, fake_python, model_dir, monkeypatch, ignore_term=True))
        engines[-1].start()
        engines[-1].wait_healthy()
    started = time.monotonic()
    stop_all(engines, grace_s=2)
    # In a row this would take two grace periods (4 s and more); in parallel, one.
    assert time.monotonic() - started < 3.5
    assert all(engine.process.returncode == -9 for engine in engines)


def test_engine_dying_during_start_raises_with_log_tail(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engine = make_engine(tmp_path, fake_python, model_dir, monkeypatch, mode="crash")
    with pytest.raises(EngineError) as raised:
        with engine:
            pytest.fail("the body must not run when start-up fails")
    message = str(raised.value)
    assert "exited with code 3 during start-up" in message
    assert "Engine core initialization failed." in message
    assert str(engine.log_path) in message


def test_never_healthy_times_out_and_leaves_nothing_running(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engine = make_engine(tmp_path, fake_python, model_dir, monkeypatch, mode="silent")
    engine.startup_timeout_s = 2
    with pytest.raises(EngineError, match=r"not healthy after \d+ s"):
        with engine:
            pass
    assert engine.process.returncode is not None
    assert not pid_alive(worker_pid(tmp_path))


def test_port_in_use_is_a_clear_error(tmp_path, fake_python, model_dir, monkeypatch) -> None:
    engine = make_engine(tmp_path, fake_python, model_dir, monkeypatch)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", engine.config.port))
        squatter.listen()
        with pytest.raises(EngineError, match=rf"127\.0\.0\.1:{engine.config.port}: port already in use"):
            engine.start()
    assert engine.process is None


def test_missing_engine_venv_and_model_are_clear_errors(tmp_path, model_dir) -> None:
    no_venv = VllmEngine(EngineConfig(model_dir, port=free_port(), python=tmp_path / "none" / "python"),
                         tmp_path / "a.log")
    with pytest.raises(EngineError, match="run `make vllm` first"):
        no_venv.start()
    no_model = VllmEngine(EngineConfig(tmp_path / "absent", port=free_port(), python=Path(sys.executable)),
                          tmp_path / "b.log")
    with pytest.raises(EngineError, match="run `forge stack model build` first"):
        no_model.start()


def test_environment_pins_offline_and_tp_binding() -> None:
    inherited = {"PATH": "/usr/bin", "VLLM_CPU_KVCACHE_SPACE": "4"}
    by_bytes = EngineConfig(Path("m"), port=1, kv_cache_memory_bytes=1 << 30).environment(inherited)
    assert by_bytes["HF_HUB_OFFLINE"] == "1"
    # An inherited VLLM_CPU_KVCACHE_SPACE would silently override --kv-cache-memory-bytes.
    assert "VLLM_CPU_KVCACHE_SPACE" not in by_bytes
    assert "VLLM_CPU_OMP_THREADS_BIND" not in by_bytes
    tp2 = EngineConfig(Path("m"), port=1, kv_cache_space_gib=2, tensor_parallel_size=2).environment(inherited)
    assert tp2["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert tp2["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    command = EngineConfig(Path("m"), port=1, tensor_parallel_size=2, shutdown_timeout_s=60).command()
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--shutdown-timeout") + 1] == "60"


def test_parse_kv_cache_tokens_reads_the_real_log_line() -> None:
    # Verbatim from a vllm-cpu 0.32.0 start-up log of the tiny Llama at VLLM_CPU_KVCACHE_SPACE=1.
    line = ("(EngineCore pid=6863) INFO 11-23 10:17:19 [kv_cache_utils.py:2327] CPU KV cache size: 2,097,152 "
            "tokens, Maximum concurrency for 2,048 tokens per request: 1024.00x")
    assert parse_kv_cache_tokens("noise\n" + line + "\nmore") == 2_097_152
    assert parse_kv_cache_tokens("GPU KV cache size: 1,024 tokens") == 1024
    assert parse_kv_cache_tokens("Maximum concurrency for 2,048 tokens per request") is None
