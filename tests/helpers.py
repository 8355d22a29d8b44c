"""Small helpers shared by the tests that drive live servers (the simulator, the stack)."""

from __future__ import annotations

import time

import httpx


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1):
    """Poll until `predicate()` is truthy and return its value, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


def stream_long_completion(url: str, prompt: str = "abcd", max_tokens: int = 900) -> None:
    """Hold one streamed completion open (run it in a thread); ends quietly when the server stops the stream."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            for _ in response.iter_lines():
                pass
    except httpx.HTTPError:
        pass
