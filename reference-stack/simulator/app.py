"""The simulator's HTTP API (FastAPI): vLLM's OpenAI-compatible routes, /metrics, and the fault admin API.

Every route exists once per engine: engine 0 at the root (`/v1/completions`, `/metrics`, ...) and engine i
under `/engines/{i}/...` (`/engines/0/...` is engine 0 too). One port and one event loop serve all engines, so
1,000 metric endpoints cost one process and one socket (Prometheus targets set `__metrics_path__`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from forge.reference_stack.simulator import tokenizer
from forge.reference_stack.simulator.config import SimulatorConfig
from forge.reference_stack.simulator.engine import EngineDeadError, FaultError, SimEngine, SimRequest, StepOutput

VLLM_VERSION = "0.32.0"  # the release whose /metrics page the simulator reproduces
ENGINE_PATH = re.compile(r"^/engines/(\d+)(/.*)$")
# What prometheus-fastapi-instrumentator records on a vLLM server (it skips /metrics, /health, ...); the
# simulator's own /_forge and /gpu-metrics routes are not vLLM's and are not recorded either.
INSTRUMENTED_HANDLERS = frozenset({"/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/models"})


class Simulator:
    """All simulated engines of this process and their dcgm-exporter-style GPU pages."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.engines: list[SimEngine] = []
        self._gpu_registries: dict[int, CollectorRegistry] = {}
        self._gpu_busy_samples: dict[int, tuple[float, float]] = {}
        self.started_at = int(time.time())

    async def start(self) -> None:
        # Engines are built inside the server's event loop, so their asyncio objects belong to it.
        self.engines = [SimEngine(index, self.config) for index in range(self.config.engines)]
        for engine in self.engines:
            engine.start()

    async def stop(self) -> None:
        await asyncio.gather(*(engine.stop() for engine in self.engines))

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight requests finish for up to timeout_s, then end the rest with an error event, as vLLM
        does on SIGTERM ("EngineCore encountered an issue", code 500, with the default --shutdown-timeout 0)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(e.running or e.waiting for e in self.engines):
            await asyncio.sleep(0.05)
        for engine in self.engines:
            engine.abort_all("abort", error="EngineCore encountered an issue. See stack trace for the root cause.")

    def gpu_page(self, engine: SimEngine) -> bytes:
        registry = self._gpu_registries.get(engine.index)
        if registry is None:
            registry = self._gpu_registries[engine.index] = self._gpu_registry(engine)
        return generate_latest(registry)

    def _gpu_registry(self, engine: SimEngine) -> CollectorRegistry:
        """dcgm-exporter's names and labels (gpu, UUID, device, modelName, Hostname); one GPU per engine."""
        registry = CollectorRegistry(auto_describe=False)
        labels = {"gpu": "0", "UUID": f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'forge-sim/{engine.index}')}",
                  "device": "nvidia0", "modelName": self.config.gpu_model_name,
                  "Hostname": f"{self.config.hostname}-{engine.index}"}
        # HELP texts as in dcgm-exporter's default-counters.csv.
        Gauge("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", list(labels),
              registry=registry).labels(**labels).set_function(lambda: engine.xid)
        Gauge("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", list(labels),
              registry=registry).labels(**labels).set_function(lambda: engine.ecc_dbe)
        Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", list(labels),
              registry=registry).labels(**labels).set_function(lambda: self._gpu_util(engine))
        return registry

    def _gpu_util(self, engine: SimEngine) -> float:
        """Share of wall time spent in engine steps since the previous scrape, in percent."""
        now = time.monotonic()
        last_time, last_busy = self._gpu_busy_samples.get(engine.index, (now, engine.busy_s))
        self._gpu_busy_samples[engine.index] = (now, engine.busy_s)
        if now <= last_time:
            return 0.0
        return round(min(100.0, 100.0 * (engine.busy_s - last_busy) / (now - last_time)), 1)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class HttpMetricsMiddleware:
    """Records the `http_*` families per engine, as prometheus-fastapi-instrumentator does on vLLM (the
    response size is the Content-Length header only, so streams count 0, as there)."""

    def __init__(self, app, simulator: Simulator) -> None:
        self.app, self.simulator = app, simulator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, engine_index = scope["path"], 0
        match = ENGINE_PATH.match(path)
        if match:
            engine_index, path = int(match.group(1)), match.group(2)
        if path not in INSTRUMENTED_HANDLERS or engine_index >= len(self.simulator.engines):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_bytes = int(headers.get(b"content-length", b"0") or 0)
        outcome = {"status": 500, "bytes": 0}
        started = time.perf_counter()

        async def recording_send(message):
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-length":
                        outcome["bytes"] = int(value)
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.simulator.engines[engine_index].metrics.observe_http(
                path, scope["method"], outcome["status"], request_bytes, outcome["bytes"],
                time.perf_counter() - started)


def build_app(config: SimulatorConfig) -> FastAPI:
    simulator = Simulator(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await simulator.start()
        yield
        await simulator.stop()

    app = FastAPI(title="Forge engine simulator (vLLM 0.32 API)", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.simulator = simulator
    router = APIRouter()

    def engine_of(request: Request) -> SimEngine:
        raw = request.path_params.get("engine_index")
        index = 0 if raw is None else int(raw)
        if index >= len(simulator.engines):
            raise BadRequest(f"no engine {index}: this simulator serves engines 0..{len(simulator.engines) - 1}",
                             404, "NotFoundError")
        return simulator.engines[index]

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, str(exc), exc.kind)

    @router.get("/health")
    async def health(request: Request) -> Response:
        engine = engine_of(request)
        return Response(status_code=500 if engine.dead else 200)

    @router.get("/version")
    async def version() -> dict:
        return {"version": VLLM_VERSION}

    @router.get("/v1/models")
    async def models(request: Request) -> dict:
        engine_of(request)
        return {"object": "list", "data": [{
            "id": config.model, "object": "model", "created": simulator.started_at, "owned_by": "vllm",
            "root": config.model, "parent": None, "max_model_len": config.max_model_len}]}

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(engine_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/gpu-metrics")
    async def gpu_metrics(request: Request) -> Response:
        return Response(simulator.gpu_page(engine_of(request)), media_type=CONTENT_TYPE_LATEST)

    @router.get("/_forge/faults")
    async def faults_get(request: Request) -> dict:
        return engine_of(request).fault_state()

    @router.post("/_forge/faults")
    async def faults_post(request: Request) -> dict:
        engine = engine_of(request)
        try:
            return engine.set_fault(await json_body(request))
        except FaultError as exc:
            raise BadRequest(str(exc)) from None

    @router.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        engine_of(request)
        body = await json_body(request)
        if "messages" in body:
            token_ids = tokenizer.encode(tokenizer.render_chat(_messages(body)))
        else:
            token_ids = _prompt_ids(body.get("prompt"))
        return {"count": len(token_ids), "max_model_len": config.max_model_len, "tokens": token_ids,
                "token_strs": None}

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        engine = engine_of(request)
        body = await json_body(request)
        return await _generate(engine, body, _prompt_ids(body.get("prompt")), chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        engine = engine_of(request)
        body = await json_body(request)
        return await _generate(engine, body, tokenizer.encode(tokenizer.render_chat(_messages(body))), chat=True)

    async def _generate(engine: SimEngine, body: dict, prompt_ids: list[int], chat: bool) -> Response:
        if body.get("model") not in (None, config.model):
            raise BadRequest(f"The model `{body['model']}` does not exist.", 404, "NotFoundError")
        n = body.get("n", 1)
        if n != 1:
            raise BadRequest(f"n={n!r} is not supported by the simulator; send n=1")
        if not prompt_ids:
            raise BadRequest("the prompt is empty")
        max_tokens = body.get("max_completion_tokens") if chat else None
        max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
        if max_tokens is None:  # vLLM's default: whatever the context has left
            max_tokens = config.max_model_len - len(prompt_ids)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be a positive integer; got {max_tokens!r}")
        if len(prompt_ids) + max_tokens > config.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the "
                f"completion). Please reduce the length of the messages or completion.")
        if engine.should_fail_request():
            return _error(500, "simulated engine error (forge fault error_rate)", "InternalServerError")
        try:
            sim_request = engine.add_request(prompt_ids, max_tokens, bool(body.get("ignore_eos", False)))
        except EngineDeadError as exc:
            return _error(500, str(exc), "InternalServerError")
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_stream(engine, sim_request, request_id, created, chat, include_usage),
                                     media_type="text/event-stream")
        return await _complete(engine, sim_request, request_id, created, chat)

    def _usage(sim_request: SimRequest) -> dict:
        prompt, completion = len(sim_request.prompt_token_ids), len(sim_request.output_token_ids)
        return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
                "prompt_tokens_details": None}

    async def _next_output(sim_request: SimRequest) -> StepOutput:
        """Wait for the engine's next output and merge whatever else is already queued (a slow reader gets
        the tokens of several steps in one chunk, as from vLLM)."""
        output = await sim_request.events.get()
        while not sim_request.events.empty() and output.finished_reason is None:
            more = sim_request.events.get_nowait()
            output = StepOutput(output.token_ids + more.token_ids, output.text + more.text, more.finished_reason,
                                more.error)
        return output

    async def _complete(engine: SimEngine, sim_request: SimRequest, request_id: str, created: int, chat: bool):
        text = []
        try:
            while True:
                output = await _next_output(sim_request)
                if output.error:
                    return _error(500, output.error, "InternalServerError")
                text.append(output.text)
                if output.finished_reason:
                    break
        finally:
            engine.abort(sim_request)  # no-op once finished; frees the KV if the client went away
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(text), "tool_calls": []},
                      "logprobs": None, "finish_reason": output.finished_reason, "stop_reason": None}
        else:
            choice = {"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": output.finished_reason,
                      "stop_reason": None, "prompt_logprobs": None}
        return {"id": request_id, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": config.model, "choices": [choice], "usage": _usage(sim_request)}

    async def _stream(engine: SimEngine, sim_request: SimRequest, request_id: str, created: int, chat: bool,
                      include_usage: bool):
        head = {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": config.model}

        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

        try:
            if chat:  # vLLM opens a chat stream with the assistant role before any token
                yield event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            while True:
                output = await _next_output(sim_request)
                if output.error:
                    yield event({"error": {"message": output.error, "type": "InternalServerError", "param": None,
                                           "code": 500}})
                    break
                if chat:
                    choice = {"index": 0, "delta": {"content": output.text}, "logprobs": None,
                              "finish_reason": output.finished_reason}
                else:
                    choice = {"index": 0, "text": output.text, "logprobs": None,
                              "finish_reason": output.finished_reason, "stop_reason": None}
                yield event({**head, "choices": [choice], "usage": None} if not chat else {**head, "choices": [choice]})
                if output.finished_reason:
                    break
            if include_usage:
                yield event({**head, "choices": [], "usage": _usage(sim_request)})
            yield "data: [DONE]\n\n"
        finally:
            engine.abort(sim_request)  # the client disconnected mid-stream: counted as abort, KV freed

    app.include_router(router)
    app.include_router(router, prefix="/engines/{engine_index:int}")
    app.add_middleware(HttpMetricsMiddleware, simulator=simulator)
    return app


def _prompt_ids(prompt) -> list[int]:
    """OpenAI's prompt forms for one prompt: text, a list with one text, or token ids."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return tokenizer.encode(prompt[0])
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise BadRequest("prompt must be a string, a list with one string, or a list of token ids (one prompt per "
                     "request)")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages) or not messages:
        raise BadRequest('messages must be a non-empty list of {"role": ..., "content": ...} objects')
    return messages
