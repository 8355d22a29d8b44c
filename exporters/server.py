"""The exporter process: a scrape loop and one HTTP server (/metrics, /targets), on one asyncio loop.

    async with ExporterService(settings) as service:   # binds settings.listen_host:port (port 0: any free one)
        service.url                                     # e.g. http://127.0.0.1:9400
        await service.collect_once()                    # one cycle now (tests); the loop runs one per interval

/metrics serves what the last cycle gathered (engine series rendered once per cycle) plus the exporter's own,
cost and GPU series; a request never waits for a scrape.

With settings.otlp, a second task pushes the same catalog signals to an OTLP/HTTP receiver every
otlp.interval_seconds (exporters/otlp.py); a slow or dead receiver delays only that task, never /metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import time

from aiohttp import web

from forge.exporters.config import ExporterSettings
from forge.exporters.cost import CostCollector
from forge.exporters.engine import EngineCollector
from forge.exporters.normalize import CanonicalFamily, render_families
from forge.exporters.otlp import OtlpPusher, PushResult

log = logging.getLogger("forge.exporter")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GPU_SAMPLE_TIMEOUT_SECONDS = 10.0


class ExporterService:
    def __init__(self, settings: ExporterSettings, *, gpu_collector=None):
        self.settings = settings
        self.engines = EngineCollector(settings)
        self.cost = CostCollector(settings.targets)
        self.gpu = gpu_collector
        if self.gpu is None and settings.gpu_mode == "nvml":
            from forge.exporters.gpu import NvmlCollector

            self.gpu = NvmlCollector()
        # NVML calls can hang on a failing GPU; its own thread keeps that from stalling the scrapes.
        self._gpu_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-nvml")
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task | None = None
        self.otlp = OtlpPusher(settings.otlp) if settings.otlp is not None else None
        self._otlp_task: asyncio.Task | None = None
        # Encoding a push is CPU work: its own thread, so it never waits behind (or delays) page parsing.
        self._otlp_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-otlp")
        self.host, self.port = settings.listen_host, settings.listen_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------------------------------- pages

    def render(self) -> str:
        dynamic = self.engines.self_families() + self.cost.families()
        if self.gpu is not None:
            dynamic += self.gpu.families()
        if self.otlp is not None:
            dynamic += self.otlp.families()
        return self.engines.engine_text() + render_families(dynamic)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.render().encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})

    async def _targets(self, request: web.Request) -> web.Response:
        return web.json_response({"targets": self.engines.targets_report(), "cycles": self.engines.cycles,
                                  "gpu": None if self.gpu is None else
                                  {"mode": self.gpu.mode, "available": self.gpu.available,
                                   "detail": self.gpu.detail or None}})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="Forge exporter: /metrics (Prometheus), /targets (scrape status, JSON)\n")

    # ------------------------------------------------------------------------------------------- work

    async def collect_once(self) -> None:
        tasks = [self.engines.collect_once()]
        if self.gpu is not None and self.gpu.available:
            loop = asyncio.get_running_loop()
            tasks.append(asyncio.wait_for(loop.run_in_executor(self._gpu_executor, self.gpu.sample),
                                          GPU_SAMPLE_TIMEOUT_SECONDS))
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("collection step failed: %s: %s", type(result).__name__, result)

    def snapshot_families(self) -> list[CanonicalFamily]:
        """Every family of the last cycle, engine series of all targets merged: what an OTLP push carries.

        Taken on the event loop: a target's families are replaced whole after each scrape, never changed in
        place, so the lists can be read by the encoding thread afterwards.
        """
        merged: dict[str, CanonicalFamily] = {}
        for state in self.engines.states.values():
            for name, family in state.families.items():
                into = merged.setdefault(name, CanonicalFamily(name, family.type, family.help))
                for key, value in family.series.items():
                    into.series.setdefault(key, value)
        dynamic = self.engines.self_families() + self.cost.families()
        if self.gpu is not None:
            dynamic += self.gpu.families()
        if self.otlp is not None:
            dynamic += self.otlp.families()
        return [*merged.values(), *dynamic]

    async def push_otlp_once(self) -> PushResult:
        """One OTLP export of the last cycle's series (with its retries); the push loop calls it per interval."""
        if self.otlp is None:
            raise RuntimeError("no otlp settings")
        return await self.otlp.push(self.snapshot_families(), self._otlp_executor)

    async def _otlp_loop(self) -> None:
        interval = self.settings.otlp.interval_seconds
        while self.engines.cycles == 0:     # nothing to say before the first cycle
            await asyncio.sleep(min(0.5, interval))
        while True:
            started = time.monotonic()
            try:
                await self.push_otlp_once()
            except Exception as exc:  # noqa: BLE001 — a broken push must not end the loop (or touch /metrics)
                log.error("OTLP push failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _run_loop(self) -> None:
        while True:
            started = time.monotonic()
            await self.collect_once()
            # A slow cycle starts the next at once rather than piling cycles on top of each other.
            await asyncio.sleep(max(0.0, self.settings.interval_seconds - (time.monotonic() - started)))

    async def start(self, *, loop_cycles: bool = True) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/targets", self._targets)
        app.router.add_get("/", self._index)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.listen_host, self.settings.listen_port)
        await site.start()
        sockets = site._server.sockets if site._server else []   # the real port when 0 was asked for
        if sockets:
            self.host, self.port = sockets[0].getsockname()[:2]
        if loop_cycles:
            self._loop_task = asyncio.create_task(self._run_loop())
            if self.otlp is not None:
                self._otlp_task = asyncio.create_task(self._otlp_loop())

    async def stop(self) -> None:
        for task in (self._loop_task, self._otlp_task):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.otlp is not None:
            await self.otlp.close()
        self._otlp_executor.shutdown(wait=False, cancel_futures=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engines.close()
        if self.gpu is not None and hasattr(self.gpu, "close"):
            self.gpu.close()
        self._gpu_executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> "ExporterService":
        await self.start(loop_cycles=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


async def run_forever(settings: ExporterSettings, on_ready=None) -> None:
    """`forge exporter run`: serve until SIGINT/SIGTERM, then close connections cleanly."""
    service = ExporterService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    if on_ready is not None:
        on_ready(service)
    try:
        await stop.wait()
    finally:
        await service.stop()
