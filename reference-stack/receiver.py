"""Forge's Alertmanager webhook receiver: every notification appended to a JSON-lines file, with when it came.

    python -m forge.reference_stack.receiver --port 19095 --out .forge/stack/alerts.jsonl

Each line: {"received_at": "2026-11-02T10:00:01.234+00:00", "received_unix": 1793613601.234, "path": "/alerts",
"payload": <Alertmanager's webhook body>}. Tests and game days read it with `notifications()` / `alert_events()`
to assert which alerts fired (and resolved) and when. Standard library only; binds 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY_BYTES = 10_000_000  # Alertmanager batches are small; refuse anything absurd instead of buffering it
EXIT_BAD_INPUT = 2


def make_handler(out: Path, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path in ("/health", "/-/healthy"):
                self._answer(200, b"ok\n")
            else:
                self._answer(404, b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                self._answer(413 if length > MAX_BODY_BYTES else 400, b"need a JSON body\n")
                return
            body = self.rfile.read(length)
            try:
                payload = json.loads(body)
            except ValueError:
                self._answer(400, b"body is not JSON\n")
                return
            now = time.time()
            record = {"received_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(timespec="milliseconds"),
                      "received_unix": round(now, 3), "path": self.path, "payload": payload}
            line = json.dumps(record, separators=(",", ":")) + "\n"
            with lock, out.open("a", encoding="utf-8") as f:  # one writer at a time: lines never interleave
                f.write(line)
            self._answer(200, b"ok\n")

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:  # one short line per request on stderr (the stack's log)
            sys.stderr.write(f"forge receiver: {self.address_string()} {fmt % args}\n")

    return Handler


def make_server(host: str, port: int, out: Path) -> ThreadingHTTPServer:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(exist_ok=True)
    return ThreadingHTTPServer((host, port), make_handler(out, threading.Lock()))


def notifications(path: Path) -> list[dict]:
    """Every recorded notification, oldest first (a torn last line, written as we read, is skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def alert_events(path: Path) -> list[dict]:
    """One row per alert per notification: {alertname, status ('firing'|'resolved'), labels, received_unix,
    starts_at}."""
    rows = []
    for record in notifications(path):
        for alert in record.get("payload", {}).get("alerts", []):
            labels = alert.get("labels", {})
            rows.append({"alertname": labels.get("alertname"), "status": alert.get("status"), "labels": labels,
                         "received_unix": record["received_unix"], "starts_at": alert.get("startsAt")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m forge.reference_stack.receiver",
                                description="Alertmanager webhook receiver writing JSON lines.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to append notifications to")
    args = p.parse_args(argv)
    try:
        server = make_server(args.host, args.port, args.out)
    except OSError as exc:
        sys.stderr.write(f"forge receiver: error: {args.host}:{args.port}: {exc.strerror or exc} — pick a free port\n")
        return EXIT_BAD_INPUT
    sys.stderr.write(f"forge receiver: listening on http://{args.host}:{args.port}, writing {args.out}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
