"""Small helpers shared by the tests that drive live servers (the simulator, the stack)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1):
    """Poll until `predicate()` is truthy and return its value, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


def stream_long_completion(url: str, prompt: str = "abcd", max_tokens: int = 900) -> None:
    """Hold one streamed completion open (run it in a thread); ends quietly when the server stops the stream."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            for _ in response.iter_lines():
                pass
    except httpx.HTTPError:
        pass


class LogFollower:
    """`forge stack logs COMPONENT --follow` in its own process; its stdout lines collected by a thread."""

    def __init__(self, state_dir, component: str, lines: int = 5):
        import subprocess
        import sys
        import threading

        command = [sys.executable, "-c", "import sys; from forge.cli import main; sys.argv[0] = 'forge'; main()",
                   "stack", "logs", component, "--follow", "-n", str(lines), "--state-dir", str(state_dir)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def saw(self, text: str, timeout_s: float) -> bool:
        return bool(wait_for(lambda: any(text in line for line in self.lines), timeout_s, 0.05))

    def wait(self, timeout_s: float) -> tuple[int | None, str]:
        """(exit code, stderr) once it ends by itself; (None, "") if it still runs after `timeout_s`."""
        import subprocess

        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, ""
        self._reader.join(timeout=5)
        return code, self.process.stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def stack_binaries_installed() -> bool:
    return all(shutil.which(b) for b in ("haproxy", "prometheus")) and bool(
        shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"))


def need_stack_binaries() -> None:
    """Fail (not skip) a test of the reference stack on a machine without its packages: the fix is one command."""
    if not stack_binaries_installed():
        pytest.fail("haproxy / prometheus / prometheus-alertmanager not installed — run `make stack-deps`",
                    pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_haproxy(directory: Path, servers: dict[str, str], timeout_s: float = 30) -> Iterator[Path]:
    """A real HAProxy on 127.0.0.1 with backend `engines` holding `servers` (name -> the rest of its `server` line,
    e.g. "127.0.0.1:8000 weight 100"), no health checks; yields its admin socket, stops it on exit."""
    if not shutil.which("haproxy"):
        pytest.fail("haproxy not installed — run `make stack-deps`", pytrace=False)
    sock = directory / "haproxy.sock"
    config = directory / "haproxy.cfg"
    lines = "\n".join(f"    server {name} {rest}" for name, rest in servers.items())
    config.write_text(f"""global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client {timeout_s:g}s
    timeout server {timeout_s:g}s
frontend gateway
    bind 127.0.0.1:{free_port()}
    default_backend engines
backend engines
{lines}
""")
    process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(sock))
                    s.sendall(b"show info\n")
                    if s.recv(64):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "haproxy did not open its admin socket"
            time.sleep(0.1)
        yield sock
    finally:
        process.terminate()
        process.wait(timeout=10)
