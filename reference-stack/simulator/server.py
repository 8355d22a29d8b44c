"""Running the simulator: `serve()` for tests (background thread or subprocess) and `run()` for the CLI."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

import uvicorn

from forge.reference_stack.simulator.app import build_app
from forge.reference_stack.simulator.config import SimulatorConfig

READY_LINE = "forge simulator listening on "  # the CLI prints this + the base URL once it accepts requests
# Requests still streaming at shutdown are aborted first; this only bounds a client that never reads.
GRACEFUL_SHUTDOWN_S = 3


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it Nagle +
    # delayed ACKs hold the first streamed token back ~40 ms.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port (0 = any free)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(config: SimulatorConfig) -> uvicorn.Server:
    app = build_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, backlog=2048))
    original_shutdown = server.shutdown

    async def shutdown(sockets=None):
        # Like vLLM's --shutdown-timeout: stop accepting first (listeners closed, idle keep-alive connections
        # closed, busy ones closed after their response, as uvicorn's own shutdown does), then let in-flight
        # requests finish for up to that long, then end what is left with an error event (0, vLLM's default,
        # ends them at once). uvicorn would otherwise wait on open streams.
        for listener in server.servers:
            listener.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        await app.state.simulator.drain(config.shutdown_timeout_s)
        await original_shutdown(sockets=sockets)

    server.shutdown = shutdown
    return server


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def serve(port: int = 0, *, host: str = "127.0.0.1", in_subprocess: bool = False, startup_timeout_s: float = 20.0,
          new_session: bool = False, **options) -> Iterator[str]:
    """Run a simulator for the duration of a `with` block and yield its base URL (e.g. http://127.0.0.1:41234).

    `options` are SimulatorConfig fields (engines=, model=, max_num_seqs=, kv_blocks=, step_overhead_s=, ...);
    an unknown or invalid one raises ValueError before anything starts. port=0 picks a free port.
    In a thread (default) the crash fault fails the engine (crash_action 'fail'); with in_subprocess=True the
    simulator is its own process, by default crash_action 'exit' so a crash really kills it; new_session=True
    puts that process in its own session, so a terminal's Ctrl-C reaches only the caller, which stops it. On exit every
    in-flight request is aborted, the server stops and the thread is joined (or the process terminated).
    """
    unknown = sorted(set(options) - set(SimulatorConfig.option_names()))
    if unknown:
        raise ValueError(f"unknown simulator option(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(SimulatorConfig.option_names())}")
    if in_subprocess:
        options.setdefault("crash_action", "exit")
        config = SimulatorConfig(**options)  # validate here, with a Python error instead of a CLI exit
        with _serve_subprocess(host, port, config, startup_timeout_s, new_session) as url:
            yield url
        return
    options.setdefault("crash_action", "fail")
    config = SimulatorConfig(**options)
    if config.crash_action == "exit":
        raise ValueError("crash_action='exit' would kill the calling process; use in_subprocess=True")
    sock = _bind(host, port)
    server = _uvicorn_server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="forge-simulator", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator's server thread stopped during start-up (see its log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator did not start within {startup_timeout_s} s")
            time.sleep(0.01)
        yield _url(host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=GRACEFUL_SHUTDOWN_S + 10)
        sock.close()


def _cli_args(config: SimulatorConfig) -> list[str]:
    args = []
    for f in fields(SimulatorConfig):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    return args


@contextmanager
def _serve_subprocess(host: str, port: int, config: SimulatorConfig, startup_timeout_s: float,
                      new_session: bool = False) -> Iterator[str]:
    command = [sys.executable, "-u", "-m", "forge.reference_stack.simulator", "--host", host, "--port", str(port),
               *_cli_args(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=None, text=True,
                               start_new_session=new_session)
    try:
        url = _await_ready_line(process, startup_timeout_s)
        yield url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=GRACEFUL_SHUTDOWN_S + 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()


def _await_ready_line(process: subprocess.Popen, timeout_s: float) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith(READY_LINE):
                found.append(line[len(READY_LINE):].split()[0])
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        process.kill()
        process.wait()
        raise RuntimeError(f"the simulator subprocess did not report ready within {timeout_s} s "
                           f"(exit status {process.returncode})")
    # Keep draining stdout so the child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return found[0]


def run(host: str, port: int, config: SimulatorConfig) -> int:
    """The CLI's server: print the ready line, serve until SIGINT/SIGTERM, exit 0."""
    sock = _bind(host, port)
    server = _uvicorn_server(config)
    url = _url(host, sock.getsockname()[1])

    async def main() -> None:
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            print(f"{READY_LINE}{url} ({config.engines} engine{'s' if config.engines > 1 else ''}, model "
                  f"{config.model!r})", flush=True)
        await serving

    asyncio.run(main())
    sock.close()
    return 0 if server.started else 1

