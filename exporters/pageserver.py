"""A loopback HTTP server that plays misbehaving /metrics targets, for tests and benchmarks/exporter_scale.py.

    with PageServer() as server:
        server.route("/vllm", text=page)                       # a normal page (changeable between scrapes)
        server.route("/slow", text=page, delay_seconds=3)       # answers late
        server.route("/huge", stream_bytes=50_000_000)          # streams a page far over any limit
        server.route("/err", status=500)
        server.url("/vllm")                                     # http://127.0.0.1:<port>/vllm

Binds 127.0.0.1 only. `bytes_sent[path]` counts what the server really wrote, so a test can tell that the client
stopped reading early.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    text: str | None = None
    status: int = 200
    delay_seconds: float = 0.0
    stream_bytes: int = 0               # > 0: a chunked body of this many bytes of sample lines, no Content-Length
    declared_length: bool = True        # send Content-Length for `text`
    content_type: str = "text/plain; version=0.0.4; charset=utf-8"


class _Server(ThreadingHTTPServer):
    # The default backlog (5) drops connections when many targets are scraped at once; the kernel then retries
    # after 1 s, which looks like a slow target.
    request_queue_size = 1024


class PageServer:
    def __init__(self, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = {}
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: tests read results, not access logs
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self._httpd = _Server((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pageserver", daemon=True)

    def route(self, path: str, **options) -> str:
        self.routes[path] = Route(**options)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path
        self.requests[path] += 1
        route = self.routes.get(path)
        if route is None:
            route = Route(text="not found\n", status=404)
        # Sleep in small steps so stop() isn't held up by a slow route.
        deadline = time.monotonic() + route.delay_seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(min(0.05, deadline - time.monotonic()))
        try:
            handler.send_response(route.status)
            handler.send_header("Content-Type", route.content_type)
            if route.stream_bytes:
                self._stream(handler, path, route.stream_bytes)
                return
            body = (route.text or "").encode("utf-8")
            if route.declared_length:
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(body)
            self.bytes_sent[path] += len(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout, size limit): what the tests provoke

    def _stream(self, handler: BaseHTTPRequestHandler, path: str, total: int) -> None:
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        line = b'vllm:num_requests_running{model_name="m",filler="' + b"x" * 200 + b'"} 1\n'
        chunk = line * (65536 // len(line))
        sent = 0
        while sent < total and not self._stop.is_set():
            piece = chunk[: total - sent]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            self.bytes_sent[path] += len(piece)
        handler.wfile.write(b"0\r\n\r\n")

    def __enter__(self) -> "PageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
