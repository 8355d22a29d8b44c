"""`forge chaos watchdog` with a real HAProxy: a hung simulator is drained through the runtime API (no new requests)
and put back to ready when it makes progress again. HAProxy comes from `make stack-deps`; loopback only, bounded."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
from helpers import stream_long_completion
from typer.testing import CliRunner

from forge.chaos.cli import app
from forge.reference_stack.simulator import serve

pytestmark = [pytest.mark.stack, pytest.mark.timeout(90)]

if not shutil.which("haproxy"):
    pytest.fail("haproxy not installed — run `make stack-deps`", pytrace=False)

STALL, POLL = 2.0, 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_status(sock: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        s.sendall(b"show stat\n")
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    header = text.splitlines()[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in text.splitlines()[1:] if line]
    return next(r["status"] for r in rows if r.get("pxname") == "engines" and r.get("svname") == "s1")


def test_watchdog_cli_drains_a_hung_replica_at_haproxy_and_readies_it_after(tmp_path):
    sock = str(tmp_path / "haproxy.sock")
    with serve(port=0, step_overhead_s=0.01) as url:
        port = url.rsplit(":", 1)[1]
        config = tmp_path / "haproxy.cfg"
        config.write_text(f"""global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend gateway
    bind 127.0.0.1:{free_port()}
    default_backend engines
backend engines
    server s1 127.0.0.1:{port}
""")
        haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    server_status(sock)  # the admin socket answers and the server is known
                    break
                except (OSError, StopIteration, IndexError):
                    assert time.monotonic() < deadline, "haproxy did not open its admin socket"
                    time.sleep(0.1)

            statuses: list[str] = []

            def fault_script() -> None:
                time.sleep(1.0)   # tokens flowing first: no drain expected
                statuses.append(server_status(sock))
                httpx.post(url + "/_forge/faults", json={"mode": "hang"}).raise_for_status()
                time.sleep(STALL + 2 * POLL + 0.5)
                statuses.append(server_status(sock))
                httpx.post(url + "/_forge/faults", json={"mode": "none"}).raise_for_status()
                time.sleep(1.0)
                statuses.append(server_status(sock))

            threading.Thread(target=stream_long_completion, args=(url,), daemon=True).start()
            script = threading.Thread(target=fault_script)
            script.start()
            result = CliRunner().invoke(app, ["watchdog", "--target", url, "--stall-seconds", str(STALL),
                                              "--poll-interval", str(POLL), "--haproxy-socket", sock,
                                              "--backend", "engines", "--server", "s1",
                                              "--max-seconds", str(1.0 + STALL + 2 * POLL + 0.5 + 1.5)])
            script.join()
            assert result.exit_code == 0, result.output
            assert "s1: healthy -> hung" in result.output and "s1: hung -> healthy" in result.output
            # no-check servers show "no check" when ready, "DRAIN" when drained.
            assert statuses[0] != "DRAIN" and statuses[1] == "DRAIN" and statuses[2] != "DRAIN", statuses
        finally:
            haproxy.terminate()
            haproxy.wait(timeout=10)
