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
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

OUTCOMES = ("ok", "http_error", "lost_mid_stream", "timeout", "connect_error", "cancelled")
MAX_ERROR_CHARS = 300


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


async def send_request(client: httpx.AsyncClient, url: str, payload: dict, result: RequestResult,
                       run_start_perf: float, timeout_s: float) -> RequestResult:
    """Send, time and classify. Never raises except CancelledError (after recording ``cancelled``)."""
    api, stream = result.api, result.stream
    started = time.perf_counter()
    result.sent_s = started - run_start_perf
    result.sent_at = time.time()
    result.schedule_lag_s = result.sent_s - result.scheduled_s
    token_times: list[float] = []
    response_started = False
    done = False
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=payload) as response:
                response_started = True
                result.status = response.status_code
                if response.status_code >= 400:
                    body = (await response.aread()).decode("utf-8", "replace")
                    result.outcome, result.error = "http_error", _short(body) or response.reason_phrase
                    return result
                if not stream:
                    body = json.loads(await response.aread())
                    now = time.perf_counter()
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
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # SSE comments, event names, blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
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
                            token_times.append(time.perf_counter())
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
    except asyncio.CancelledError:
        result.outcome, result.error = "cancelled", "run interrupted"
        raise
    except (TimeoutError, httpx.TimeoutException) as exc:
        if isinstance(exc, httpx.ConnectTimeout):
            result.outcome, result.error = "connect_error", "connect timeout"
        else:
            result.outcome, result.error = "timeout", f"no completion within {timeout_s:g} s"
    except httpx.ConnectError as exc:
        result.outcome, result.error = "connect_error", _short(exc) or type(exc).__name__
    except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError) as exc:
        result.outcome = "lost_mid_stream" if response_started else "connect_error"
        result.error = f"{type(exc).__name__}: {_short(exc)}"
    finally:
        if token_times:
            result.ttft_s = token_times[0] - started
            result.itl_s = [b - a for a, b in zip(token_times, token_times[1:])]
            if result.tokens_out_source != "usage":
                result.tokens_out = len(token_times)
        if result.e2e_s is None and result.outcome not in ("connect_error", "cancelled"):
            result.e2e_s = time.perf_counter() - started
    return result
