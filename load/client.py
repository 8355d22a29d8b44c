"""One OpenAI-compatible request, streamed (SSE) or not, timed per token and classified by outcome.

Outcomes (every request gets exactly one):
- ``ok``: the response completed (``data: [DONE]`` when streaming, a full JSON body otherwise);
- ``http_error``: the server answered with a status >= 400, or an error event before any token (``status`` kept);
- ``lost_mid_stream``: the response had started (status 200) but the stream broke or ended without ``[DONE]``;
- ``timeout``: no completion within the request timeout (a hung stream included);
- ``connect_error``: no response at all (refused, unreachable, or disconnected before any status line);
- ``cancelled``: the run was interrupted (Ctrl-C) while this request was waiting or in flight.

Token timing: every SSE event carrying non-empty text is one token arrival (engines stream one token per event; if one
batches several, the gap is per event). The output count comes from the final ``usage`` when the server sends it.

The HTTP client is aiohttp (C HTTP parser, one keep-alive pool): profiling `forge load run` at 40 req/s showed httpx's
pure-Python stack (httpcore, h11, anyio) taking most of the event loop, which delayed the dispatcher (schedule lag).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

OUTCOMES = ("ok", "http_error", "lost_mid_stream", "timeout", "connect_error", "cancelled")
MAX_ERROR_CHARS = 300
# After ``data: [DONE]`` the chunked body's terminator is read too, so the connection goes back to the keep-alive pool
# (an unread body closes it, and a new connection per request costs a connect on the next send); bounded in case a
# server keeps the stream open after [DONE].
DRAIN_AFTER_DONE_S = 0.5
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class RequestSpec:
    index: int
    scheduled_s: float
    prompt_tokens_target: int
    output_tokens_target: int
    prefix_group: int = 0


@dataclass
class RequestResult:
    """One JSON line of results.jsonl. Times in seconds; ``*_s`` offsets are from the run's start."""

    index: int
    scheduled_s: float
    prompt_tokens_target: int
    output_tokens_target: int
    prefix_group: int
    api: str
    stream: bool
    sent_s: float | None = None
    sent_at: float | None = None  # Unix time of the send, to line up with server logs and metrics
    schedule_lag_s: float | None = None
    outcome: str = "cancelled"
    status: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float | None = None
    tokens_in: int | None = None
    tokens_out: int = 0
    tokens_out_source: str = "events"
    finish_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def build_payload(api: str, model: str, prompt: str, max_tokens: int, stream: bool, ignore_eos: bool) -> dict:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": stream}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if ignore_eos:
        # vLLM/SGLang extension: generate exactly max_tokens, so output lengths follow the plan.
        body["ignore_eos"] = True
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _event_text(api: str, choice: dict) -> str:
    if api == "chat":
        delta = choice.get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content") or ""
    return choice.get("text") or ""


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text[:MAX_ERROR_CHARS]


def new_session(request_timeout_s: float) -> aiohttp.ClientSession:
    """The session requests share: no connection limit (a capped pool would queue sends inside the client and hide it
    from the schedule lag), a connect timeout; the total per-request bound is ``send_request``'s own."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, request_timeout_s)))


async def send_request(session: aiohttp.ClientSession, url: str, payload: dict, result: RequestResult,
                       run_start_perf: float, timeout_s: float) -> RequestResult:
    """Send, time and classify. Never raises except CancelledError (after recording ``cancelled``)."""
    api, stream = result.api, result.stream
    perf = time.perf_counter
    data_bytes = json.dumps(payload, separators=(",", ":")).encode()
    started = perf()
    result.sent_s = started - run_start_perf
    result.sent_at = time.time()
    result.schedule_lag_s = result.sent_s - result.scheduled_s
    token_times: list[float] = []
    response_started = False
    done = False
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, data=data_bytes, headers=JSON_HEADERS) as response:
                response_started = True
                result.status = response.status
                if response.status >= 400:
                    body = (await response.read()).decode("utf-8", "replace")
                    result.outcome, result.error = "http_error", _short(body) or (response.reason or "")
                    return result
                if not stream:
                    body = json.loads(await response.read())
                    now = perf()
                    choice = (body.get("choices") or [{}])[0]
                    text = choice.get("text") if api == "completions" else (choice.get("message") or {}).get("content")
                    result.finish_reason = choice.get("finish_reason")
                    result.ttft_s = result.e2e_s = now - started
                    usage = body.get("usage") or {}
                    result.tokens_in = usage.get("prompt_tokens")
                    if usage.get("completion_tokens") is not None:
                        result.tokens_out, result.tokens_out_source = int(usage["completion_tokens"]), "usage"
                    else:
                        result.tokens_out = 1 if text else 0
                    result.outcome = "ok"
                    return result
                content = response.content
                async for line in content:
                    if not line.startswith(b"data:"):
                        continue  # SSE comments, event names, blank separators
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = event["error"]
                        message = error.get("message", error) if isinstance(error, dict) else error
                        result.error = _short(message)
                        code = error.get("code") if isinstance(error, dict) else None
                        if token_times:
                            result.outcome = "lost_mid_stream"
                        else:
                            result.outcome = "http_error"
                            result.status = code if isinstance(code, int) and code >= 400 else 500
                        break
                    for choice in event.get("choices") or ():
                        if _event_text(api, choice):
                            token_times.append(perf())
                        if choice.get("finish_reason"):
                            result.finish_reason = choice["finish_reason"]
                    usage = event.get("usage")
                    if usage:
                        result.tokens_in = usage.get("prompt_tokens")
                        if usage.get("completion_tokens") is not None:
                            result.tokens_out = int(usage["completion_tokens"])
                            result.tokens_out_source = "usage"
                if result.outcome not in ("http_error", "lost_mid_stream"):
                    result.outcome = "ok" if done else "lost_mid_stream"
                    if not done:
                        result.error = "stream ended without data: [DONE]"
                if done:
                    result.e2e_s = perf() - started
                    if not content.at_eof():
                        try:
                            async with asyncio.timeout(DRAIN_AFTER_DONE_S):
                                await content.read()
                        except (TimeoutError, aiohttp.ClientError):
                            pass  # the request is complete; only the connection's reuse is lost
    except asyncio.CancelledError:
        result.outcome, result.error = "cancelled", "run interrupted"
        raise
    except aiohttp.ConnectionTimeoutError:
        result.outcome, result.error = "connect_error", "connect timeout"
    except TimeoutError:
        result.outcome, result.error = "timeout", f"no completion within {timeout_s:g} s"
    except aiohttp.ClientConnectorError as exc:
        result.outcome, result.error = "connect_error", _short(exc) or type(exc).__name__
    except (aiohttp.ClientError, ValueError) as exc:  # a broken connection or payload, a malformed event
        result.outcome = "lost_mid_stream" if response_started else "connect_error"
        result.error = f"{type(exc).__name__}: {_short(exc)}"
    finally:
        if token_times:
            result.ttft_s = token_times[0] - started
            result.itl_s = [b - a for a, b in zip(token_times, token_times[1:])]
            if result.tokens_out_source != "usage":
                result.tokens_out = len(token_times)
        if result.e2e_s is None and result.outcome not in ("connect_error", "cancelled"):
            result.e2e_s = perf() - started
    return result
