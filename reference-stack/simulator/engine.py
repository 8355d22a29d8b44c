"""One simulated vLLM engine: a continuous-batching scheduler loop (asyncio) over a block-based KV cache.

Modelled on vLLM V1's scheduler, simplified where the difference does not show on /metrics:
- each step serves running requests first (a decode token each, or the next prefill chunk within the step's
  token budget), then admits waiting ones if nothing was preempted in this step and max_num_seqs allows;
- a request holds ceil(tokens in KV / block_size) blocks; when a running request needs a block and none is free,
  the most recently admitted request is preempted (recompute: its KV is dropped, it goes back to the head of the
  queue and later re-prefills prompt + output so far);
- prefix caching keeps an LRU of chained hashes of full prompt blocks (capacity kv_blocks); a new request hits
  the longest cached prefix, at most (tokens - 1) so one token is always computed, as in vLLM. Simplification:
  blocks shared by concurrently running requests are counted once per request in kv_cache_usage_perc;
- a step costs step_overhead + prefill tokens x prefill_time_per_token + decoding sequences x
  decode_time_per_seq (+ draft tokens at the prefill rate), times the `slow` fault's factor; its tokens come out
  at its end;
- speculative decoding: each decode step proposes spec_tokens drafts; each is accepted in turn with
  spec_acceptance_rate until the first rejection; accepted + 1 (bonus) tokens come out.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from forge.reference_stack.simulator.config import SimulatorConfig
from forge.reference_stack.simulator.tokenizer import OUTPUT_PIECES, piece_id
from forge.reference_stack.simulator.vllm_metrics import EngineMetrics, cache_config_info

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"
# A step that starts this late (event-loop jitter) is charged from its planned start, so ITL stays on target;
# larger delays (an overloaded loop) are not caught up, so no burst of back-to-back steps follows.
MAX_CATCH_UP_S = 0.005
FAULT_MODES = ("hang", "crash", "slow", "error_rate", "xid", "none")
ERROR_LAYERS = ("http", "engine")  # where the error_rate fault fails a request
OUTPUT_PIECE_IDS = [piece_id(piece) for piece in OUTPUT_PIECES]


class EngineDeadError(RuntimeError):
    """The engine crashed (crash fault, crash_action 'fail'): requests fail until the fault is cleared."""


class FaultError(ValueError):
    """A fault request the simulator cannot apply; the message says which field and how to fix it."""


@dataclass
class StepOutput:
    """What one engine step produced for one request."""
    token_ids: list[int]
    text: str
    finished_reason: str | None = None
    error: str | None = None


@dataclass(eq=False)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    ignore_eos: bool
    n: int
    rng: random.Random
    block_hashes: list[int]
    arrival_s: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    output_token_ids: list[int] = field(default_factory=list)
    state: str = WAITING
    num_computed: int = 0  # tokens whose KV is in the cache
    blocks: int = 0
    num_cached_prompt_tokens: int = 0
    num_preemptions: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finished_reason: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)


@dataclass
class _Scheduled:
    request: SimRequest
    num_new_tokens: int  # tokens computed this step (decode: 1 + drafts)
    prefilling: bool
    num_drafts: int = 0


class SimEngine:
    def __init__(self, index: int, config: SimulatorConfig) -> None:
        self.index = index
        self.config = config
        self.metrics = EngineMetrics(index, config.model, cache_config_info(
            index, config.block_size, config.kv_blocks, config.kv_bytes_per_token, config.max_model_len,
            config.enable_prefix_caching), config.spec_tokens)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.prefix_cache: OrderedDict[int, None] = OrderedDict()
        self.dead = False
        self.slow_factor = 1.0
        self.error_rate = 0.0
        self.error_layer = "http"
        self.xid = 0
        self.ecc_dbe = 0  # uncorrectable (double-bit) ECC errors, with the xid fault's ecc_dbe
        self.busy_s = 0.0  # time spent in steps, for the GPU-utilization gauge
        self._faults: dict[str, dict] = {}
        self._fault_timers: dict[str, asyncio.TimerHandle] = {}
        self._rng = random.Random(f"{config.seed}:{index}")
        self._request_ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._not_hung = asyncio.Event()
        self._not_hung.set()
        self._task: asyncio.Task | None = None
        m = self.metrics
        m.num_requests_running.set_function(lambda: len(self.running))
        m.num_requests_waiting.set_function(lambda: len(self.waiting))
        m.num_requests_waiting_capacity.set_function(lambda: len(self.waiting))
        m.kv_cache_usage_perc.set_function(lambda: self.used_blocks() / self.config.kv_blocks)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-engine-{self.index}")

    async def stop(self) -> None:
        """Abort every request (their streams end) and stop the loop."""
        self.abort_all("abort")
        for timer in self._fault_timers.values():
            timer.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def used_blocks(self) -> int:
        return sum(request.blocks for request in self.running)

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt_token_ids: list[int], max_tokens: int, ignore_eos: bool, n: int = 1) -> SimRequest:
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue (simulated crash)")
        serial = next(self._request_ids)
        bs = self.config.block_size
        hashes, parent = [], 0
        for start in range(0, len(prompt_token_ids) - bs + 1, bs):  # full blocks only, chained like vLLM's
            parent = hash((parent, tuple(prompt_token_ids[start:start + bs])))
            hashes.append(parent)
        request = SimRequest(request_id=f"{self.index}-{serial}", prompt_token_ids=prompt_token_ids,
                             max_tokens=max_tokens, ignore_eos=ignore_eos, n=n,
                             rng=random.Random(f"{self.config.seed}:{self.index}:{serial}"), block_hashes=hashes)
        self.waiting.append(request)
        self.metrics.version += 1
        self._wakeup.set()
        return request

    def abort(self, request: SimRequest) -> None:
        """The client went away: free its KV and count it as finished_reason="abort", like vLLM."""
        if request.state == FINISHED:
            return
        self._remove(request)
        self._finish(request, "abort", time.monotonic())
        self.metrics.version += 1

    def abort_all(self, reason: str, error: str | None = None) -> None:
        now = time.monotonic()
        self.metrics.version += 1
        for request in list(self.running) + list(self.waiting):
            self._remove(request)
            if error is None:
                self._finish(request, reason, now)
            else:
                request.state = FINISHED
                request.finished_reason = reason
                request.events.put_nowait(StepOutput([], "", reason, error))

    def should_fail_request(self) -> bool:
        """Whether the error_rate fault fails this request. With layer "engine" the failure is the engine's own, so
        it is counted as vLLM counts one (vllm:request_success_total{finished_reason="error"}); with "http" the API
        server refuses it and the engine never sees it."""
        fail = self.error_rate > 0 and self._rng.random() < self.error_rate
        if fail and self.error_layer == "engine":
            self.metrics.request_success["error"].inc()
        return fail

    def _remove(self, request: SimRequest) -> None:
        if request.state == RUNNING:
            self.running.remove(request)
        elif request.state == WAITING:
            self.waiting.remove(request)
        request.blocks = 0

    # ------------------------------------------------------------------ scheduler loop
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step_end = loop.time()
        while True:
            if self.dead or not (self.running or self.waiting):
                self._wakeup.clear()
                await self._wakeup.wait()
                step_end = loop.time()
                continue
            if not self._not_hung.is_set():
                await self._not_hung.wait()
                step_end = loop.time()
                continue
            plan = self._schedule()
            self.metrics.version += 1  # admissions and preemptions move gauges and counters
            if not plan:  # nothing fits yet (cannot happen with a valid config); wait for a change
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            cost = self._step_cost(plan) * self.slow_factor
            now = loop.time()
            step_end = max(step_end, now - MAX_CATCH_UP_S) + cost
            await asyncio.sleep(max(0.0, step_end - now))
            self.busy_s += cost
            # A hang that began during the step freezes it before its tokens come out, as a stuck collective does.
            if not self._not_hung.is_set():
                await self._not_hung.wait()
                step_end = loop.time()
            if self.dead:
                continue
            self._apply(plan)
            self.metrics.version += 1

    def _step_cost(self, plan: list[_Scheduled]) -> float:
        c = self.config
        prefill_tokens = sum(item.num_new_tokens for item in plan if item.prefilling)
        decoding = [item for item in plan if not item.prefilling]
        drafts = sum(item.num_drafts for item in decoding)
        return (c.step_overhead_s + (prefill_tokens + drafts) * c.prefill_time_per_token_s
                + len(decoding) * c.decode_time_per_seq_s)

    def _schedule(self) -> list[_Scheduled]:
        c, m = self.config, self.metrics
        budget = c.max_num_batched_tokens
        free = c.kv_blocks - self.used_blocks()
        plan: list[_Scheduled] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            decoding = request.first_token_s is not None and request.num_tokens - request.num_computed == 1
            drafts = 0
            if decoding and c.spec_tokens:
                drafts = max(0, min(c.spec_tokens, budget - 1, request.max_tokens - len(request.output_token_ids) - 1))
            new_tokens = 1 + drafts if decoding else min(request.num_tokens - request.num_computed, budget)
            needed = math.ceil((request.num_computed + new_tokens) / c.block_size) - request.blocks
            while needed > free:
                victim = self.running.pop()
                free += victim.blocks
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request.state != RUNNING:
                break
            request.blocks += max(needed, 0)
            free -= max(needed, 0)
            plan.append(_Scheduled(request, new_tokens, prefilling=not decoding, num_drafts=drafts))
            budget -= new_tokens
            index += 1
        if preempted:  # vLLM admits nothing new in a step that had to preempt
            return plan
        now = time.monotonic()
        while self.waiting and len(self.running) < c.max_num_seqs and budget > 0:
            request = self.waiting[0]
            cached = self._prefix_hit(request) if c.enable_prefix_caching else 0
            new_tokens = min(request.num_tokens - cached, budget)
            needed = math.ceil((cached + new_tokens) / c.block_size)
            if needed > free:
                break
            self.waiting.popleft()
            request.state, request.num_computed, request.blocks = RUNNING, cached, needed
            self.running.append(request)
            free -= needed
            budget -= new_tokens
            if c.enable_prefix_caching:
                m.prefix_cache_queries.inc(request.num_tokens)
                m.prefix_cache_hits.inc(cached)
            if request.first_scheduled_s is None:
                request.first_scheduled_s = now
                request.num_cached_prompt_tokens = cached
                m.request_queue_time.observe(now - request.arrival_s)
                m.prompt_tokens_cached.inc(cached)
                m.prompt_tokens_cached_device.inc(cached)
            plan.append(_Scheduled(request, new_tokens, prefilling=True))
        return plan

    def _prefix_hit(self, request: SimRequest) -> int:
        limit = (request.num_tokens - 1) // self.config.block_size
        hits = 0
        for block_hash in request.block_hashes[:limit]:
            if block_hash not in self.prefix_cache:
                break
            self.prefix_cache.move_to_end(block_hash)
            hits += 1
        return hits * self.config.block_size

    def _remember_prompt_blocks(self, request: SimRequest) -> None:
        for block_hash in request.block_hashes:
            self.prefix_cache[block_hash] = None
            self.prefix_cache.move_to_end(block_hash)
        while len(self.prefix_cache) > self.config.kv_blocks:
            self.prefix_cache.popitem(last=False)

    def _preempt(self, request: SimRequest) -> None:
        request.state, request.blocks, request.num_computed = WAITING, 0, 0
        request.num_preemptions += 1
        self.metrics.num_preemptions.inc()
        self.waiting.appendleft(request)

    def _apply(self, plan: list[_Scheduled]) -> None:
        c, m = self.config, self.metrics
        now = time.monotonic()
        iteration_tokens = 0
        for item in plan:
            request = item.request
            if request.state != RUNNING:  # aborted during the step
                continue
            if item.prefilling:
                iteration_tokens += item.num_new_tokens
                request.num_computed += item.num_new_tokens
                if request.num_computed < request.num_tokens:  # chunked prefill: more chunks to come
                    continue
                if c.enable_prefix_caching:
                    self._remember_prompt_blocks(request)
                new_tokens = 1
            else:
                accepted = 0
                while accepted < item.num_drafts and request.rng.random() < c.spec_acceptance_rate:
                    accepted += 1
                if item.num_drafts:
                    m.spec_num_drafts.inc()
                    m.spec_num_draft_tokens.inc(item.num_drafts)
                    m.spec_num_accepted_tokens.inc(accepted)
                    for position in range(accepted):
                        m.spec_accepted_per_pos[position].inc()
                request.num_computed += 1 + accepted
                new_tokens = 1 + accepted
            new_tokens = min(new_tokens, request.max_tokens - len(request.output_token_ids))
            token_ids, text, finished = [], [], None
            for _ in range(new_tokens):
                piece = request.rng.randrange(len(OUTPUT_PIECES))
                token_ids.append(OUTPUT_PIECE_IDS[piece])
                text.append(OUTPUT_PIECES[piece])
                if not request.ignore_eos and c.eos_probability and request.rng.random() < c.eos_probability:
                    finished = "stop"
                    break
            request.output_token_ids.extend(token_ids)
            iteration_tokens += len(token_ids)
            m.generation_tokens.inc(len(token_ids))
            if request.first_token_s is None:
                request.first_token_s = now
                prompt_len = len(request.prompt_token_ids)
                computed = prompt_len - request.num_cached_prompt_tokens
                m.time_to_first_token.observe(now - request.arrival_s)
                m.prompt_tokens.inc(prompt_len)
                m.prompt_tokens_by_source["local_compute"].inc(computed)
                m.prompt_tokens_by_source["local_cache_hit"].inc(request.num_cached_prompt_tokens)
                m.request_prefill_kv_computed_tokens.observe(computed)
            else:
                m.inter_token_latency.observe(now - request.last_token_s)
            request.last_token_s = now
            if finished is None and len(request.output_token_ids) >= request.max_tokens:
                finished = "length"
            request.events.put_nowait(StepOutput(token_ids, "".join(text)))
            if finished:
                self.running.remove(request)
                request.blocks = 0
                self._finish(request, finished, now)
        m.iteration_tokens.observe(iteration_tokens)

    def _finish(self, request: SimRequest, reason: str, now: float) -> None:
        m = self.metrics
        request.state, request.finished_reason = FINISHED, reason
        m.request_success[reason].inc()
        if reason != "abort":  # vLLM records the per-request histograms for completed requests
            generated = len(request.output_token_ids)
            m.e2e_request_latency.observe(now - request.arrival_s)
            m.request_prompt_tokens.observe(len(request.prompt_token_ids))
            m.request_generation_tokens.observe(generated)
            m.request_max_num_generation_tokens.observe(request.max_tokens)
            m.request_params_n.observe(request.n)
            m.request_params_max_tokens.observe(request.max_tokens)
            m.request_num_preemptions.observe(request.num_preemptions)
            m.request_inference_time.observe(request.last_token_s - request.first_scheduled_s)
            m.request_prefill_time.observe(request.first_token_s - request.first_scheduled_s)
            decode_s = request.last_token_s - request.first_token_s
            m.request_decode_time.observe(decode_s)
            if generated > 1:
                m.request_time_per_output_token.observe(decode_s / (generated - 1))
        request.events.put_nowait(StepOutput([], "", reason))

    # ------------------------------------------------------------------ faults
    def fault_state(self) -> dict:
        now = asyncio.get_running_loop().time()
        active = {}
        for mode, spec in self._faults.items():
            entry = {key: value for key, value in spec.items() if key != "until"}
            if spec.get("until") is not None:
                entry["remaining_seconds"] = round(max(0.0, spec["until"] - now), 3)
            active[mode] = entry
        return {"engine": self.index, "active": active, "crash_action": self.config.crash_action}

    def set_fault(self, body: dict) -> dict:
        """Apply one fault (they combine: hang + xid is a GPU falling off the bus); mode 'none' clears them all."""
        if not isinstance(body, dict):
            raise FaultError('the body must be a JSON object, e.g. {"mode": "hang", "duration_seconds": 30}')
        mode = body.get("mode")
        if mode not in FAULT_MODES:
            raise FaultError(f"mode must be one of {', '.join(FAULT_MODES)}; got {mode!r}")
        if mode == "none":
            for active in list(self._faults):
                self._clear_fault(active)
            return self.fault_state()
        duration = body.get("duration_seconds")
        if duration is not None and (not isinstance(duration, (int, float)) or duration <= 0):
            raise FaultError(f"duration_seconds must be a positive number of seconds; got {duration!r}")
        spec: dict = {}
        if mode == "slow":
            factor = body.get("factor", 10)
            if not isinstance(factor, (int, float)) or factor <= 0:
                raise FaultError(f"slow needs factor > 0 (step times are multiplied by it); got {factor!r}")
            spec["factor"] = self.slow_factor = float(factor)
        elif mode == "error_rate":
            rate = body.get("rate")
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise FaultError(f"error_rate needs rate within [0, 1] (share of requests answered 500); got {rate!r}")
            spec["rate"] = self.error_rate = float(rate)
            layer = body.get("layer", "http")
            if layer not in ERROR_LAYERS:
                raise FaultError(f"error_rate layer must be one of {', '.join(ERROR_LAYERS)} (http: refused before the "
                                 f"engine, its counters don't see it; engine: counted as finished_reason=error); "
                                 f"got {layer!r}")
            spec["layer"] = self.error_layer = layer
        elif mode == "xid":
            xid = body.get("xid", 79)
            if not isinstance(xid, int) or xid <= 0:
                raise FaultError(f"xid needs a positive XID code (e.g. 79: GPU fell off the bus); got {xid!r}")
            spec["xid"] = self.xid = xid
            ecc_dbe = body.get("ecc_dbe", 0)
            if not isinstance(ecc_dbe, int) or ecc_dbe < 0:
                raise FaultError(f"ecc_dbe needs a count >= 0 of uncorrectable ECC errors; got {ecc_dbe!r}")
            spec["ecc_dbe"] = self.ecc_dbe = ecc_dbe
        loop = asyncio.get_running_loop()
        if mode in self._fault_timers:
            self._fault_timers.pop(mode).cancel()
        spec["until"] = None
        if duration is not None:
            spec["until"] = loop.time() + duration
            self._fault_timers[mode] = loop.call_later(duration, self._clear_fault, mode)
        self._faults[mode] = spec
        if mode == "hang":
            self._not_hung.clear()
        elif mode == "crash":
            self._crash(loop)
        return self.fault_state()

    def _crash(self, loop: asyncio.AbstractEventLoop) -> None:
        sys.stderr.write(f"forge simulator: engine {self.index}: EngineCore encountered an issue (crash fault)\n")
        if self.config.crash_action == "exit":
            # Let the fault request's response go out first; then die like a killed engine, with no cleanup.
            loop.call_later(0.05, os._exit, 1)
            return
        self.dead = True
        self.abort_all("error", error="EngineCore encountered an issue. See stack trace for the root cause.")

    def _clear_fault(self, mode: str) -> None:
        self._faults.pop(mode, None)
        timer = self._fault_timers.pop(mode, None)
        if timer is not None:
            timer.cancel()
        if mode == "hang":
            self._not_hung.set()
        elif mode == "crash":
            self.dead = False
            self._wakeup.set()
        elif mode == "slow":
            self.slow_factor = 1.0
        elif mode == "error_rate":
            self.error_rate, self.error_layer = 0.0, "http"
        elif mode == "xid":
            self.xid = self.ecc_dbe = 0
