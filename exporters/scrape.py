"""Fetch one /metrics page with hard bounds: a deadline for the whole request and a cap on the bytes read.

A page is streamed and abandoned as soon as it passes the cap, so a runaway engine (or a wrong URL serving a
video) costs at most `max_bytes` of memory, never the whole response. Every failure becomes a ScrapeFailure
with a fixed `reason` token (exported as a label) and a one-line `detail` for people.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_PAGE_BYTES = 10_000_000   # a vLLM page is ~100 KB; 100x that is no longer a metrics page
CHUNK_BYTES = 64 * 1024
# Ask for the classic text format: some servers answer OpenMetrics or protobuf to a bare Accept.
ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"

# Reasons a scrape fails, as exported in the `reason` label (fixed, low-cardinality values).
REASONS = ("connection_refused", "unreachable", "timeout", "http_status", "too_large", "not_utf8",
           "invalid_page", "unknown_engine", "engine_mismatch", "duplicate_series", "internal_error")


@dataclass
class ScrapeFailure(Exception):
    reason: str
    detail: str
    bytes_read: int = 0     # how much of the body was read before giving up

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass
class FetchedPage:
    text: str
    bytes_read: int
    duration_seconds: float


async def fetch_page(session: aiohttp.ClientSession, url: str, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                     max_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> FetchedPage:
    """GET `url`; ScrapeFailure on any error. The deadline covers connect, headers and body together."""
    started = time.perf_counter()
    read = 0
    try:
        async with asyncio.timeout(timeout_seconds):
            async with session.get(url, headers={"Accept": ACCEPT}, max_redirects=3) as response:
                if response.status != 200:
                    raise ScrapeFailure("http_status", f"{url} answered HTTP {response.status} {response.reason or ''}"
                                        .strip() + " — check the URL path (usually /metrics)")
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise ScrapeFailure("too_large", f"{url} declares {declared:,} bytes, over the "
                                        f"{max_bytes:,}-byte page limit — is this a metrics endpoint?")
                chunks: list[bytes] = []
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    read += len(chunk)
                    if read > max_bytes:
                        raise ScrapeFailure("too_large", f"{url} sent more than the {max_bytes:,}-byte page limit; "
                                            f"stopped reading — is this a metrics endpoint?", read)
                    chunks.append(chunk)
    except ScrapeFailure:
        raise
    except TimeoutError:
        raise ScrapeFailure("timeout", f"{url} did not answer within {timeout_seconds:g} s "
                            f"({read:,} bytes read) — is the engine overloaded or hung?", read) from None
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        raise ScrapeFailure("connection_refused" if refused else "unreachable",
                            f"{url}: {_one_line(exc.os_error or exc)} — is the engine running?") from None
    except aiohttp.TooManyRedirects:
        raise ScrapeFailure("http_status", f"{url}: too many redirects — point at the /metrics URL itself") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ScrapeFailure("unreachable", f"{url}: {_one_line(exc) or type(exc).__name__}") from None
    body = b"".join(chunks)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeFailure("not_utf8", f"{url}: byte {exc.start} is not UTF-8 — not a Prometheus text page") from None
    return FetchedPage(text=text, bytes_read=read, duration_seconds=time.perf_counter() - started)


def _one_line(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def new_session(max_connections: int = 100) -> aiohttp.ClientSession:
    """One pooled session per exporter; per-request deadlines come from fetch_page."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
    # trust_env off: an HTTP(S)_PROXY in the environment must not route loopback scrapes elsewhere.
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                 trust_env=False, auto_decompress=True)
