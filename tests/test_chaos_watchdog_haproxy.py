"""`forge chaos watchdog` with a real HAProxy: a hung simulator is drained through the runtime API (no new requests)
and put back to ready when it makes progress again. HAProxy comes from `make stack-deps`; loopback only, bounded."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import running_haproxy, stream_long_completion
from typer.testing import CliRunner

from forge.chaos.cli import app
from forge.reference_stack.simulator import serve

pytestmark = [pytest.mark.stack, pytest.mark.timeout(90)]

STALL, POLL = 2.0, 0.25


def server_status(sock: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        text = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    header = text.splitlines()[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","))) for line in text.splitlines()[1:] if line]
    return next(r["status"] for r in rows if r.get("pxname") == "engines" and r.get("svname") == "s1")


def test_watchdog_cli_drains_a_hung_replica_at_haproxy_and_readies_it_after(tmp_path):
    with serve(port=0, step_overhead_s=0.01) as url, \
            running_haproxy(tmp_path, {"s1": url.removeprefix("http://")}) as sock:
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
                                          "--poll-interval", str(POLL), "--haproxy-socket", str(sock),
                                          "--backend", "engines", "--server", "s1",
                                          "--max-seconds", str(1.0 + STALL + 2 * POLL + 0.5 + 1.5)])
        script.join()
        assert result.exit_code == 0, result.output
        assert "s1: healthy -> hung" in result.output and "s1: hung -> healthy" in result.output
        # no-check servers show "no check" when ready, "DRAIN" when drained.
        assert statuses[0] != "DRAIN" and statuses[1] == "DRAIN" and statuses[2] != "DRAIN", statuses
