"""The run: a plan of requests (arrival offsets + lengths), dispatched on time, each recorded as one JSON line.

Bounds: only requests due before ``duration_s`` (and at most ``max_requests``) are planned; after dispatch the run
waits for in-flight requests, each bounded by ``request_timeout_s``. A stop (Ctrl-C) ends dispatch, cancels what is
in flight and records it as ``cancelled``: every dispatched request is written, flushed line by line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp

from forge.errors import InputError
from forge.load.arrivals import arrival_offsets
from forge.load.client import RequestResult, RequestSpec, build_payload, new_session, send_request
from forge.load.prompts import LengthDistribution, PromptFactory
from forge.load.traces import TraceEntry

# Sleep coarsely until this close to a send time, then yield to the loop until it arrives: timer wake-ups are late by
# up to ~1 ms, and schedule lag is a figure we report.
SPIN_WINDOW_S = 0.0015


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: resolving it could point anywhere


def check_target(url: str, allow_remote: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--target {url!r}: not an http(s) URL — e.g. http://127.0.0.1:8000")
    if not allow_remote and not is_loopback_url(url):
        raise InputError(f"--target {url}: not a loopback address (127.0.0.0/8, ::1, localhost) — load against "
                         "another host needs --allow-remote")
    return url.rstrip("/").removesuffix("/v1")


def plan_rate(*, arrival: str, rate: float, burstiness: float, duration_s: float, max_requests: int | None,
              prompt_lengths: LengthDistribution, output_lengths: LengthDistribution, seed: int,
              prefix_groups: int = 1) -> list[RequestSpec]:
    offsets = arrival_offsets(arrival, rate, duration_s=duration_s, max_requests=max_requests,
                              burstiness=burstiness, seed=seed)
    # Lengths draw from their own stream so changing the arrival process keeps the same request shapes.
    rng = random.Random(seed + 1)
    return [RequestSpec(i, t, prompt_lengths.sample(rng), output_lengths.sample(rng), i % max(1, prefix_groups))
            for i, t in enumerate(offsets)]


def plan_trace(entries: list[TraceEntry], *, duration_s: float, max_requests: int | None,
               prefix_groups: int = 1, max_prompt_tokens: int | None = None,
               max_output_tokens: int | None = None) -> list[RequestSpec]:
    plan = []
    for entry in entries:
        if entry.offset_s >= duration_s or (max_requests is not None and len(plan) >= max_requests):
            break
        prompt = min(entry.prompt_tokens, max_prompt_tokens) if max_prompt_tokens else entry.prompt_tokens
        output = min(entry.output_tokens, max_output_tokens) if max_output_tokens else entry.output_tokens
        plan.append(RequestSpec(len(plan), entry.offset_s, prompt, output, len(plan) % max(1, prefix_groups)))
    return plan


@dataclass
class LiveStats:
    """What the progress display shows; updated by request tasks, read by the display."""

    planned: int = 0
    dispatched: int = 0
    in_flight: int = 0
    outcomes: Counter = field(default_factory=Counter)
    recent_ttft: deque = field(default_factory=lambda: deque(maxlen=2000))
    recent_itl: deque = field(default_factory=lambda: deque(maxlen=5000))
    recent_sends: deque = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass
class RunOptions:
    base_url: str
    model: str
    api: str = "completions"
    stream: bool = True
    ignore_eos: bool = True
    concurrency_limit: int | None = None
    request_timeout_s: float = 60.0
    start_delay_s: float = 0.05


class ResultWriter:
    """Appends one JSON line per finished request and flushes it, so an interrupted run keeps what it did."""

    def __init__(self, handle: IO[str]):
        self.handle = handle
        self.records: list[dict[str, Any]] = []

    def write(self, result: RequestResult) -> None:
        record = result.as_dict()
        self.records.append(record)
        self.handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.handle.flush()


async def run_plan(plan: list[RequestSpec], prompts: PromptFactory, options: RunOptions, writer: ResultWriter,
                   *, stop: asyncio.Event | None = None, stats: LiveStats | None = None,
                   client: Any = None, on_dispatch: Callable[[], None] | None = None) -> int:
    """Dispatch the plan on schedule; return how many requests were dispatched (each has been written).

    ``client``: an aiohttp session to send with; anything else (callers that calibrate with an httpx client pass it)
    is not used for requests, and the run opens and closes its own session."""
    stop = stop or asyncio.Event()
    stats = stats or LiveStats()
    stats.planned = len(plan)
    url = f"{options.base_url}/v1/{'chat/completions' if options.api == 'chat' else 'completions'}"
    semaphore = asyncio.Semaphore(options.concurrency_limit) if options.concurrency_limit else None
    own_client = not isinstance(client, aiohttp.ClientSession)
    if own_client:
        client = new_session(options.request_timeout_s)
    tasks: set[asyncio.Task] = set()
    run_start = time.perf_counter() + options.start_delay_s

    async def one(spec: RequestSpec) -> None:
        result = RequestResult(spec.index, spec.scheduled_s, spec.prompt_tokens_target, spec.output_tokens_target,
                               spec.prefix_group, options.api, options.stream)
        try:
            if semaphore:
                await semaphore.acquire()
            try:
                payload = build_payload(options.api, options.model, prompts.build(spec.index, spec.prompt_tokens_target),
                                        spec.output_tokens_target, options.stream, options.ignore_eos)
                stats.in_flight += 1
                stats.recent_sends.append(time.perf_counter())
                try:
                    await send_request(client, url, payload, result, run_start, options.request_timeout_s)
                finally:
                    stats.in_flight -= 1
            finally:
                if semaphore:
                    semaphore.release()
        except asyncio.CancelledError:
            if result.outcome != "cancelled":
                result.outcome, result.error = "cancelled", "run interrupted"
        finally:
            stats.outcomes[result.outcome] += 1
            if result.outcome == "ok" and result.ttft_s is not None:
                stats.recent_ttft.append(result.ttft_s)
                stats.recent_itl.extend(result.itl_s)
            writer.write(result)

    try:
        stop_wait = asyncio.ensure_future(stop.wait())
        for spec in plan:
            due = run_start + spec.scheduled_s
            delay = due - time.perf_counter()
            if delay > SPIN_WINDOW_S:
                await asyncio.wait([stop_wait], timeout=delay - SPIN_WINDOW_S)
            while not stop.is_set() and time.perf_counter() < due:
                await asyncio.sleep(0)
            if stop.is_set():
                break
            task = asyncio.create_task(one(spec))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.dispatched += 1
            if on_dispatch:
                on_dispatch()
        # Drain: requests end on their own within request_timeout_s; a stop cancels them instead.
        while tasks and not stop.is_set():
            await asyncio.wait([stop_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if own_client:
            await client.close()
    return stats.dispatched
