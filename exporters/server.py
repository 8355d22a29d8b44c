"""The exporter process: a scrape loop and one HTTP server (/metrics, /targets), on one asyncio loop.

    async with ExporterService(settings) as service:   # binds settings.listen_host:port (port 0: any free one)
        service.url                                     # e.g. http://127.0.0.1:9400
        await service.collect_once()                    # one cycle now (tests); the loop runs one per interval

/metrics serves what the last cycle gathered (engine series rendered once per cycle) plus the exporter's own,
cost and GPU series; a request never waits for a scrape.
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
from forge.exporters.normalize import render_families

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

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
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
