"""OTLP/HTTP metrics push: the exporter's canonical series as OpenTelemetry metrics, through the catalog.

    pusher = OtlpPusher(settings.otlp)
    await pusher.push(families)        # one ExportMetricsServiceRequest, POSTed with retries; returns the outcome
    pusher.families()                  # its own health: forge_exporter_otlp_* (catalog scope `exporter`)

Mapping (docs/exporter.md has the table and a decoded example):
- Names, units and constant attributes come from the catalog's `otel` block (GenAI semantic conventions, e.g.
  forge_ttft_seconds -> gen_ai.server.time_to_first_token, unit s). A catalog signal without one is exported as
  `forge.<name without forge_ and _total>` (forge_itl_seconds -> forge.itl_seconds) with its unit in UCUM, so
  nothing on the Prometheus page is missing from OTLP; GPU fields as forge.gpu.<field> (e.g. forge.gpu.gpu_util),
  cost series as forge.cost_usd, forge.gpu_price_usd_per_hour, ...
- Counters -> cumulative monotonic sums; gauges -> gauges; histograms -> cumulative explicit-bucket histograms
  with the engine's own bucket bounds (re-bucketing would invent counts).
- Every Prometheus label becomes a data-point attribute (engine, model, replica, team, cost_center, ...), plus
  the catalog's constant attributes and, on semantic-convention metrics, gen_ai.request.model. The resource
  carries service.name and service.version.
- A cumulative series' start time is when the exporter first saw it, moved forward when its value goes down
  (an engine restart), as the OpenTelemetry data model asks of a reset.

The POST runs on the exporter's event loop with a deadline per request; the encoding runs in a worker thread, so
/metrics is served while a push encodes, waits or retries. 429/502/503/504 and connection errors are retried with
exponential backoff, honouring Retry-After. Headers may carry credentials: they are never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Iterable

import aiohttp
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (ExportMetricsServiceRequest,
                                                                            ExportMetricsServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (AGGREGATION_TEMPORALITY_CUMULATIVE, HistogramDataPoint,
                                                        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from yarl import URL

from forge import __version__
from forge.catalog import Catalog, Signal, get_catalog
from forge.exporters.normalize import CanonicalFamily, Histogram as PromHistogram, LabelKey

log = logging.getLogger("forge.exporter")

CONTENT_TYPE = "application/x-protobuf"
METRICS_PATH = "/v1/metrics"
DEFAULT_INTERVAL_SECONDS = 60.0     # the OpenTelemetry SDKs' default export interval
DEFAULT_TIMEOUT_SECONDS = 10.0      # the SDKs' default OTLP timeout
DEFAULT_SERVICE_NAME = "forge-exporter"
# The OTLP/HTTP spec's retryable answers; any other status is final.
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_RETRIES = 5
BACKOFF_BASE_SECONDS = 1.0
MAX_RETRY_DELAY_SECONDS = 60.0      # a Retry-After beyond this is cut: the next push carries the same totals
SCOPE_NAME = "forge.exporters"
# Catalog units -> UCUM (OpenTelemetry's unit syntax); anything else becomes an annotation, "{drafts}".
_UCUM = {"seconds": "s", "ratio": "1", "boolean": "1", "info": "1", "bytes": "By", "percent": "%", "MiB": "MiBy",
         "watts": "W", "millijoules": "mJ", "celsius": "Cel", "MHz": "MHz", "microseconds": "us", "USD": "{USD}",
         "USD per GPU-hour": "{USD}/h"}
_UCUM_ANNOTATION = {"tokens": "{token}", "requests": "{request}"}
# GPU fields keep dcgm-exporter's names on the Prometheus side; in OTLP they read forge.gpu.<field>.
_DCGM_PREFIX = "DCGM_FI_DEV_"
PUSHED_SCOPES = ("engine", "exporter", "gpu", "cost")


@dataclass(frozen=True)
class OtlpSettings:
    endpoint: str                       # the full URL POSTed to, ending in /v1/metrics
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    headers: dict[str, str] = field(default_factory=dict, repr=False)   # may hold credentials: kept out of repr
    service_name: str = DEFAULT_SERVICE_NAME
    compression: str = "none"           # none | gzip
    max_retries: int = MAX_RETRIES


def metrics_url(endpoint: str) -> str:
    """`http://collector:4318` -> `http://collector:4318/v1/metrics`; a URL already ending in it is kept."""
    url = URL(endpoint)
    if url.path.rstrip("/").endswith(METRICS_PATH):
        return str(url)
    return str(url.with_path(url.path.rstrip("/") + METRICS_PATH))


def safe_url(url: str) -> str:
    """The URL for logs: no user:password, no query (tokens sometimes ride there)."""
    parsed = URL(url)
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


# ----------------------------------------------------------------------------------------------- mapping

def otel_name(signal: Signal) -> str:
    """The catalog's OpenTelemetry name, or `forge.<name>` (documented fallback) for signals without one."""
    if signal.otel_name:
        return signal.otel_name
    if signal.name.startswith(_DCGM_PREFIX):
        return "forge.gpu." + signal.name.removeprefix(_DCGM_PREFIX).lower()
    return "forge." + signal.name.removeprefix("forge_").removesuffix("_total")


def otel_unit(signal: Signal) -> str:
    if signal.otel and signal.otel.get("unit"):
        return str(signal.otel["unit"])
    unit = signal.unit
    return _UCUM.get(unit) or _UCUM_ANNOTATION.get(unit) or "{" + unit.replace(" ", "_") + "}"


def exported_signals(catalog: Catalog | None = None) -> dict[str, Signal]:
    """Catalog signals the push carries: every scope the exporter serves (engine, exporter, GPU, cost)."""
    cat = catalog or get_catalog()
    return {name: s for name, s in cat.signals.items() if s.scope in PUSHED_SCOPES}


def _attr(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


class StartTimes:
    """Start time of each cumulative series: first seen, or moved to the last push before its value went down."""

    def __init__(self, origin_ns: int):
        self._origin_ns = origin_ns
        self._seen: dict[tuple[str, LabelKey], tuple[int, float]] = {}     # -> (start_ns, last value)
        self._last_push_ns = origin_ns

    def start(self, name: str, key: LabelKey, value: float, now_ns: int, live: set) -> int:
        series = (name, key)
        live.add(series)
        known = self._seen.get(series)
        if known is None:
            start = self._origin_ns
        elif value < known[1]:
            start = self._last_push_ns    # reset between the last push and this one
        else:
            start = known[0]
        self._seen[series] = (start, value)
        return start

    def finish(self, now_ns: int, live: set) -> None:
        """Forget series that disappeared (bounded memory) and remember this push's time."""
        for series in set(self._seen) - live:
            del self._seen[series]
        self._last_push_ns = now_ns


def build_request(families: Iterable[CanonicalFamily], *, start_times: StartTimes, now_ns: int,
                  service_name: str = DEFAULT_SERVICE_NAME, catalog: Catalog | None = None
                  ) -> tuple[ExportMetricsServiceRequest, int]:
    """Canonical families -> one ExportMetricsServiceRequest and its number of data points.

    Families the catalog does not know are left out. Signals sharing one
    OpenTelemetry name (prompt and generation tokens -> gen_ai.client.token.usage) become one metric whose data
    points differ by the catalog's constant attributes (gen_ai.token.type).
    """
    wanted = exported_signals(catalog)
    metrics: dict[str, Metric] = {}
    members: dict[str, list[Signal]] = {}     # the catalog signals behind each OpenTelemetry name
    live: set = set()
    points = 0
    for family in families:
        signal = wanted.get(family.name)
        if signal is None or not family.series:
            continue
        name = otel_name(signal)
        metric = metrics.get(name)
        if metric is None:
            metric = metrics[name] = Metric(name=name, unit=otel_unit(signal), description=signal.help)
            if signal.type == "counter":
                metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
                metric.sum.is_monotonic = True
            elif signal.type == "histogram":
                metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
            else:
                metric.gauge.SetInParent()
        elif metric.WhichOneof("data") != {"counter": "sum", "histogram": "histogram"}.get(signal.type, "gauge"):
            log.error("catalog: %s maps to OpenTelemetry %s with another type; left out", signal.name, name)
            continue
        constant = {str(k): str(v) for k, v in ((signal.otel or {}).get("attributes") or {}).items()}
        if signal not in members.setdefault(name, []):
            members[name].append(signal)
            if len(members[name]) > 1:      # one description for all: each part says which attribute it is
                metric.description = " ".join(
                    f"{', '.join(f'{k}={v}' for k, v in ((s.otel or {}).get('attributes') or {}).items())}: {s.help}"
                    for s in members[name])
        for key, value in family.series.items():
            attributes = [_attr(k, v) for k, v in key]
            if signal.otel_name and "model" in dict(key):
                attributes.append(_attr("gen_ai.request.model", dict(key)["model"]))
            attributes += [_attr(k, v) for k, v in sorted(constant.items())]
            if signal.type == "histogram":
                if not isinstance(value, PromHistogram):
                    continue
                start = start_times.start(signal.name, key, value.count, now_ns, live)
                metric.histogram.data_points.append(_histogram_point(value, attributes, start, now_ns))
            elif signal.type == "counter":
                start = start_times.start(signal.name, key, float(value), now_ns, live)
                metric.sum.data_points.append(NumberDataPoint(attributes=attributes, start_time_unix_nano=start,
                                                              time_unix_nano=now_ns, as_double=float(value)))
            elif signal.type == "gauge":
                metric.gauge.data_points.append(NumberDataPoint(attributes=attributes, time_unix_nano=now_ns,
                                                                as_double=float(value)))
            else:
                continue
            points += 1
    start_times.finish(now_ns, live)
    resource = Resource(attributes=[_attr("service.name", service_name), _attr("service.version", __version__)])
    scope = ScopeMetrics(scope=InstrumentationScope(name=SCOPE_NAME, version=__version__),
                         metrics=[m for m in metrics.values() if _has_points(m)])
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope])]), \
        points


def _has_points(metric: Metric) -> bool:
    return len(getattr(metric, metric.WhichOneof("data")).data_points) > 0


def _histogram_point(value: PromHistogram, attributes: list[KeyValue], start_ns: int, now_ns: int
                     ) -> HistogramDataPoint:
    """Prometheus cumulative buckets (le, count) -> OTLP explicit bounds and per-bucket counts."""
    bounds = [le for le, _ in value.buckets if le != float("inf")]
    counts, previous = [], 0.0
    for le, cumulative in value.buckets:
        if le == float("inf"):
            break
        counts.append(max(0, round(cumulative - previous)))
        previous = cumulative
    counts.append(max(0, round(value.count - previous)))      # the +Inf bucket: everything above the last bound
    return HistogramDataPoint(attributes=attributes, start_time_unix_nano=start_ns, time_unix_nano=now_ns,
                              count=max(0, round(value.count)), sum=value.sum, bucket_counts=counts,
                              explicit_bounds=bounds)


# ----------------------------------------------------------------------------------------------- sending

def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class PushResult:
    outcome: str            # success | rejected | failed
    status: int | None      # the last HTTP status (None: no answer)
    attempts: int
    data_points: int
    detail: str = ""


class OtlpPusher:
    """Sends ExportMetricsServiceRequests to one OTLP/HTTP receiver; keeps its own health counters."""

    def __init__(self, settings: OtlpSettings, *, clock=time.time, sleep=asyncio.sleep):
        self.settings = settings
        self.url = settings.endpoint
        self._start_times = StartTimes(int(clock() * 1e9))
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self.outcomes: dict[str, int] = {}
        self.retries = 0
        self.last_success_unix: float | None = None
        self.last_result: PushResult | None = None
        self._last_logged: tuple[str, int | None] | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def encode(self, families: list[CanonicalFamily]) -> tuple[bytes, int]:
        """The request body (compressed as configured) and its data-point count; CPU work, run it off the loop."""
        request, points = build_request(families, start_times=self._start_times, now_ns=int(self._clock() * 1e9),
                                        service_name=self.settings.service_name)
        body = request.SerializeToString()
        return (gzip.compress(body, compresslevel=5) if self.settings.compression == "gzip" else body), points

    async def push(self, families: list[CanonicalFamily], executor=None) -> PushResult:
        loop = asyncio.get_running_loop()
        body, points = await loop.run_in_executor(executor, self.encode, families)
        result = await self._send(body, points)
        self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1
        self.last_result = result
        if result.outcome == "success":
            self.last_success_unix = self._clock()
            if self._last_logged is not None:
                log.info("OTLP export to %s works again", safe_url(self.url))
            self._last_logged = None
        elif self._last_logged != (result.outcome, result.status):   # one line per new kind of failure
            self._last_logged = (result.outcome, result.status)
            log.warning("OTLP export to %s %s: %s", safe_url(self.url), result.outcome, result.detail)
        return result

    async def _send(self, body: bytes, points: int) -> PushResult:
        if self._session is None:
            # trust_env off: a proxy from the environment must not see the receiver's credentials.
            self._session = aiohttp.ClientSession(trust_env=False)
        headers = {**self.settings.headers, "Content-Type": CONTENT_TYPE,
                   "User-Agent": f"forge-exporter/{__version__}"}
        if self.settings.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        status, detail = None, ""
        # All attempts of one push end by the next interval (the next push carries the same cumulative totals),
        # but a push always gets one full request timeout.
        deadline = time.monotonic() + max(self.settings.timeout_seconds, self.settings.interval_seconds)
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                async with asyncio.timeout(min(self.settings.timeout_seconds,
                                               max(0.1, deadline - time.monotonic()))):
                    async with self._session.post(self.url, data=body, headers=headers,
                                                  allow_redirects=False) as response:
                        status = response.status
                        payload = await response.read()
                        if 200 <= status < 300:
                            return self._accepted(payload, points, attempt)
                        detail = f"HTTP {status} {_one_line(payload)}".strip()
                        if status not in RETRYABLE_STATUS:
                            return PushResult("failed", status, attempt, points, detail)
                        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            except TimeoutError:
                status, detail = None, f"no answer within {self.settings.timeout_seconds:g} s"
            except (aiohttp.ClientError, OSError) as exc:
                status, detail = None, f"{type(exc).__name__}: {_one_line(str(exc))}"
            delay = retry_after if retry_after is not None else \
                BACKOFF_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
            delay = min(delay, MAX_RETRY_DELAY_SECONDS)
            if attempt > self.settings.max_retries or time.monotonic() + delay >= deadline:
                return PushResult("failed", status, attempt, points,
                                  f"{detail} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})")
            self.retries += 1
            await self._sleep(delay)

    @staticmethod
    def _accepted(payload: bytes, points: int, attempt: int) -> PushResult:
        response = ExportMetricsServiceResponse()
        try:
            response.ParseFromString(payload)
        except Exception:  # noqa: BLE001 — a 2xx with a body we can't read still means accepted
            return PushResult("success", 200, attempt, points)
        rejected = response.partial_success.rejected_data_points
        if rejected or response.partial_success.error_message:
            return PushResult("rejected", 200, attempt, points,
                              f"{rejected} of {points} data points rejected: "
                              f"{_one_line(response.partial_success.error_message)}")
        return PushResult("success", 200, attempt, points)

    def families(self) -> list[CanonicalFamily]:
        """forge_exporter_otlp_* (names, types and HELP from the catalog)."""
        signals = get_catalog().signals

        def fam(name: str) -> CanonicalFamily:
            return CanonicalFamily(name, signals[name].type, signals[name].help)

        exports, retries = fam("forge_exporter_otlp_exports_total"), fam("forge_exporter_otlp_retries_total")
        for outcome, n in sorted(self.outcomes.items()):
            exports.series[(("outcome", outcome),)] = float(n)
        retries.series[()] = float(self.retries)
        out = [exports, retries]
        if self.last_success_unix is not None:
            last = fam("forge_exporter_otlp_last_success_timestamp_seconds")
            last.series[()] = self.last_success_unix
            out.append(last)
        return [f for f in out if f.series]


def _one_line(value: bytes | str, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
