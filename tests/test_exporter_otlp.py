"""OTLP/HTTP export against a real receiver (a loopback HTTP server decoding the payloads with opentelemetry-proto),
the exporter's self-metrics against the catalog, and the real vLLM spec-decode page through the catalog."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import queue
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (ExportMetricsServiceRequest,
                                                                            ExportMetricsServiceResponse)
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from forge.catalog import get_catalog
from forge.dashboards.validate import cost_series_names
from forge.errors import InputError
from forge.exporters.cli import app
from forge.exporters.config import Cost, ExporterSettings, Target, load_config
from forge.exporters.gpu import NvmlCollector
from forge.exporters.normalize import normalize
from forge.exporters.otlp import OtlpSettings, otel_name, retry_after_seconds
from forge.exporters.server import ExporterService
from forge.reference_stack.simulator import serve

pytestmark = pytest.mark.timeout(60)
CAT = get_catalog()
METRICS = Path(__file__).resolve().parent / "fixtures" / "metrics"
SPEC_PAGE = METRICS / "vllm-0.32-cpu-specdecode.txt"
SECRET = "Bearer s3cr3t-token-never-logged"
LABELS = {"team": "search", "cost_center": "cc-42"}


# ----------------------------------------------------------------------------------------------- the receiver

@dataclass
class Received:
    request: ExportMetricsServiceRequest
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """A loopback OTLP/HTTP receiver: POST /v1/metrics, protobuf decoded with opentelemetry-proto's classes.

    `answers` are (status, headers) used in order, then 200 for good; every request is kept in `received`
    (a 503 too, so a test sees the retry carried the same payload)."""

    answers: "queue.Queue[tuple[int, dict[str, str]]]" = field(default_factory=queue.Queue)
    received: list[Received] = field(default_factory=list)
    partial_rejects: int = 0

    def __post_init__(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportMetricsServiceRequest()
                request.ParseFromString(body)
                receiver.received.append(Received(request, dict(self.headers), time.monotonic()))
                try:
                    status, headers = receiver.answers.get_nowait()
                except queue.Empty:
                    status, headers = 200, {}
                response = ExportMetricsServiceResponse()
                if status == 200 and receiver.partial_rejects:
                    response.partial_success.rejected_data_points = receiver.partial_rejects
                    response.partial_success.error_message = "too many attributes"
                payload = response.SerializeToString() if status == 200 else b"try later"
                self.send_response(status)
                for k, v in {"Content-Type": "application/x-protobuf", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def sim():
    """One simulated vLLM 0.32 engine with n-gram-like speculative decoding (3 draft tokens)."""
    with serve(port=0, engines=1, spec_tokens=3, model="tiny") as url:
        yield url


def complete(sim: str, max_tokens: int) -> None:
    body = json.dumps({"model": "tiny", "prompt": "hello world " * 8, "max_tokens": max_tokens,
                       "ignore_eos": True}).encode()
    req = urllib.request.Request(f"{sim}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as response:   # loopback: the simulator under test
        response.read()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


PRICE = Cost(price_per_gpu_hour=2.0, gpus=1, accelerator="probe", capacity="on-demand", price_source="probe")


def settings(sim: str, otlp_endpoint: str, **otlp) -> ExporterSettings:
    target = Target(url=f"{sim}/metrics", name="sim-0", engine="vllm", model="tiny", labels=LABELS, cost=PRICE)
    return ExporterSettings(targets=[target], listen_port=0, timeout_seconds=5, interval_seconds=0.2,
                            otlp=OtlpSettings(endpoint=otlp_endpoint + "/v1/metrics",
                                              headers={"Authorization": SECRET}, **otlp))


def prometheus_samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metrics_of(request: ExportMetricsServiceRequest) -> dict[str, object]:
    (resource,) = request.resource_metrics
    (scope,) = resource.scope_metrics
    names = [m.name for m in scope.metrics]
    assert len(names) == len(set(names)), "one Metric per OpenTelemetry name"
    return {m.name: m for m in scope.metrics}


def attrs(point) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def points(metric):
    return list(getattr(metric, metric.WhichOneof("data")).data_points)


def get(url: str, timeout: float = 10) -> tuple[str, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode(), time.monotonic() - started


# ----------------------------------------------------------------------------------------------- the mapping

def test_otlp_payload_matches_the_prometheus_page_and_counters_stay_cumulative(sim, receiver):
    for max_tokens in (12, 20):
        complete(sim, max_tokens)

    async def two_pushes():
        async with ExporterService(settings(sim, receiver.url, compression="gzip")) as service:
            await service.collect_once()
            first = await service.push_otlp_once()
            page = service.render()
            await asyncio.to_thread(complete, sim, 16)
            await service.collect_once()
            second = await service.push_otlp_once()
            return page, first, second

    page, first, second = asyncio.run(two_pushes())
    assert (first.outcome, second.outcome) == ("success", "success") and first.attempts == 1
    assert len(receiver.received) == 2
    got = receiver.received[0]
    assert got.headers["Content-Type"] == "application/x-protobuf" and got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Authorization"] == SECRET
    (resource,) = got.request.resource_metrics
    assert attrs(resource.resource)["service.name"] == "forge-exporter"
    metrics = metrics_of(got.request)
    prom = prometheus_samples(page)
    base = {"engine": "vllm", "model": "tiny", "replica": "sim-0", **LABELS}

    exported = 0
    for signal in CAT.signals_in_scope("engine"):
        series = {k: v for k, v in prom.items() if k[0] in (signal.name, signal.name + "_count")}
        if not series:
            continue
        exported += 1
        metric = metrics[otel_name(signal)]
        # names and units per the catalog; GenAI names where the catalog has them
        assert metric.name == (signal.otel_name or otel_name(signal))
        if signal.otel:
            assert metric.unit == signal.otel["unit"]
        kind = {"counter": "sum", "gauge": "gauge", "histogram": "histogram"}[signal.type]
        assert metric.WhichOneof("data") == kind, signal.name
        if kind == "sum":
            assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == 2   # CUMULATIVE
        constant = dict((signal.otel or {}).get("attributes") or {})
        mine = [p for p in points(metric) if all(attrs(p).get(k) == v for k, v in constant.items())]
        assert len(mine) == len(series), signal.name
        for p in mine:
            a = attrs(p)
            assert {k: a[k] for k in base} == base, signal.name
            labels = tuple(sorted((k, v) for k, v in a.items() if not k.startswith("gen_ai.")))
            if signal.otel_name:
                assert a["gen_ai.request.model"] == "tiny"
            if kind == "histogram":
                # explicit bounds and counts equal the Prometheus buckets
                buckets = sorted(((float(dict(k)["le"]), v) for (n, k), v in prom.items()
                                  if n == signal.name + "_bucket" and tuple(x for x in k if x[0] != "le") == labels))
                assert list(p.explicit_bounds) == [le for le, _ in buckets if le != float("inf")]
                cumulative = [sum(p.bucket_counts[:i + 1]) for i in range(len(p.bucket_counts))]
                assert cumulative == [v for _, v in buckets]
                assert p.count == prom[(signal.name + "_count", labels)]
                assert p.sum == pytest.approx(prom[(signal.name + "_sum", labels)])
            else:
                assert p.as_double == prom[(signal.name, labels)], signal.name
    assert exported >= 15     # latency histograms, load gauges, token/request/spec-decode counters
    tokens = {attrs(p)["gen_ai.token.type"] for p in points(metrics["gen_ai.client.token.usage"])}
    assert tokens == {"input", "output"}
    assert "forge.spec_decode_accepted_tokens_per_position" in metrics
    # exporter self-metrics and the cost series ride along under forge.* names
    assert metrics["forge.engine_up"].gauge.data_points[0].as_double == 1.0
    spend = metrics["forge.cost_usd"]
    assert (spend.unit, spend.WhichOneof("data"), spend.sum.is_monotonic) == ("{USD}", "sum", True)
    assert {k: attrs(points(spend)[0])[k] for k in ("replica", *LABELS)} == {"replica": "sim-0", **LABELS}
    assert points(metrics["forge.gpu_price_usd_per_hour"])[0].as_double == 2.0
    assert metrics["forge.gpu_price_usd_per_hour"].unit == "{USD}/h"
    assert not any(name.startswith("DCGM") for name in metrics)

    # Two pushes: every cumulative point keeps its start time and never goes down; output tokens grew.
    later = metrics_of(receiver.received[1].request)
    for name, metric in metrics.items():
        if metric.WhichOneof("data") not in ("sum", "histogram"):
            continue
        before = {tuple(sorted(attrs(p).items())): p for p in points(metric)}
        for p in points(later[name]):
            old = before[tuple(sorted(attrs(p).items()))]
            assert p.start_time_unix_nano == old.start_time_unix_nano < old.time_unix_nano < p.time_unix_nano
            value, previous = (p.count, old.count) if metric.WhichOneof("data") == "histogram" else \
                (p.as_double, old.as_double)
            assert value >= previous, name
    output = lambda m: next(p.as_double for p in points(m["gen_ai.client.token.usage"])   # noqa: E731
                            if attrs(p)["gen_ai.token.type"] == "output")
    assert output(later) == output(metrics) + 16


def test_gpu_fields_are_pushed_under_forge_gpu_names_with_their_units():
    from forge.exporters.normalize import CanonicalFamily
    from forge.exporters.otlp import StartTimes, build_request

    gpu = (("gpu", "0"), ("modelName", "NVIDIA H100 80GB HBM3"), ("Hostname", "node-1"))
    families = [CanonicalFamily("DCGM_FI_DEV_GPU_UTIL", "gauge", "util", {gpu: 87.0}),
                CanonicalFamily("DCGM_FI_DEV_FB_USED", "gauge", "fb", {gpu: 70_000.0}),
                CanonicalFamily("DCGM_FI_DEV_POWER_USAGE", "gauge", "power", {gpu: 512.5}),
                CanonicalFamily("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "ecc", {gpu: 0.0})]
    request, count = build_request(families, start_times=StartTimes(1), now_ns=2)
    metrics = metrics_of(request)
    assert count == 4
    expected = {"forge.gpu.gpu_util": ("%", 87.0), "forge.gpu.fb_used": ("MiBy", 70_000.0),
                "forge.gpu.power_usage": ("W", 512.5)}
    for name, (unit, value) in expected.items():
        (point,) = points(metrics[name])
        assert (metrics[name].unit, point.as_double, attrs(point)["modelName"]) == (unit, value, "NVIDIA H100 80GB HBM3")
    ecc = metrics["forge.gpu.ecc_dbe_vol_total"]
    kind = CAT.signals["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"].type
    assert ecc.WhichOneof("data") == {"counter": "sum", "gauge": "gauge"}[kind]


def test_a_503_with_retry_after_is_retried_and_counted(sim, receiver):
    receiver.answers.put((503, {"Retry-After": "1"}))

    async def push():
        async with ExporterService(settings(sim, receiver.url)) as service:
            await service.collect_once()
            result = await service.push_otlp_once()
            return result, prometheus_samples(service.render())

    result, page = asyncio.run(push())
    assert result.outcome == "success" and result.attempts == 2
    first, second = receiver.received
    assert second.at - first.at >= 0.9      # waited as Retry-After said
    assert second.request == first.request  # the same payload, resent
    assert page[("forge_exporter_otlp_exports_total", (("outcome", "success"),))] == 1
    assert page[("forge_exporter_otlp_retries_total", ())] == 1
    assert ("forge_exporter_otlp_last_success_timestamp_seconds", ()) in page


def test_a_partial_rejection_and_a_400_are_reported_not_retried(sim, receiver):
    receiver.partial_rejects = 3

    async def pushes():
        async with ExporterService(settings(sim, receiver.url)) as service:
            await service.collect_once()
            rejected = await service.push_otlp_once()
            receiver.partial_rejects = 0
            receiver.answers.put((400, {}))
            bad = await service.push_otlp_once()
            return rejected, bad

    rejected, bad = asyncio.run(pushes())
    assert rejected.outcome == "rejected" and "3 of" in rejected.detail and "too many attributes" in rejected.detail
    assert bad.outcome == "failed" and bad.status == 400 and bad.attempts == 1 and len(receiver.received) == 2


def test_retry_after_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_dead_receiver_never_breaks_metrics_and_secrets_stay_out_of_logs(sim, caplog):
    dead = closed_port_url()

    async def run_with_loops():
        service = ExporterService(settings(sim, dead, timeout_seconds=1, max_retries=1))
        await service.start()       # the real scrape loop and push loop
        try:
            answers = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                answers.append(await asyncio.to_thread(get, service.url + "/metrics"))
                await asyncio.sleep(0.3)
            return answers, service.otlp.retries
        finally:
            await service.stop()

    with caplog.at_level(logging.INFO, logger="forge.exporter"):
        answers, retries = asyncio.run(run_with_loops())
    assert retries == 1                         # the push loop retried the dead receiver (after ~1 s) ...
    assert len(answers) >= 5 and max(took for _, took in answers) < 2.0   # ... while /metrics answered each time
    last = prometheus_samples(answers[-1][0])
    assert last[("forge_engine_up", tuple(sorted({"engine": "vllm", "model": "tiny", "replica": "sim-0",
                                                   **LABELS}.items())))] == 1.0
    assert last[("forge_exporter_otlp_retries_total", ())] == 1
    assert last[("forge_exporter_otlp_exports_total", (("outcome", "failed"),))] == 1
    said = [r.getMessage() for r in caplog.records if "OTLP" in r.getMessage()]
    assert len(said) == 1 and "failed" in said[0] and "gave up after 2 attempts" in said[0], said
    assert "s3cr3t" not in "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cr3t-token" not in repr(settings(sim, dead))


# ----------------------------------------------------------------------------------------------- config and CLI

def test_exporter_yaml_otlp_section_and_one_line_errors(tmp_path, receiver, sim):
    good = tmp_path / "exporter.yaml"
    good.write_text(f"""
targets: [{{url: "{sim}/metrics", replica: sim-0, engine: vllm}}]
otlp: {{endpoint: "{receiver.url}", interval_seconds: 1, timeout_seconds: 1, headers: {{Authorization: "{SECRET}"}}}}
""")
    loaded = load_config(good).otlp
    assert loaded.endpoint == receiver.url + "/v1/metrics" and loaded.interval_seconds == 1
    assert loaded.headers == {"Authorization": SECRET}
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"""
targets: [{{url: "{sim}/metrics", replica: sim-0}}]
otlp: {{endpoint: "collector:4318", headers: {{"X-Key": "{SECRET}\\n"}}}}
""")
    with pytest.raises(InputError) as err:
        load_config(bad)
    messages = err.value.messages
    assert any(m.startswith(f"{bad}:3:") and "otlp.endpoint" in m and "http(s) URL" in m for m in messages)
    assert any("otlp.headers" in m and "X-Key" in m for m in messages)
    assert not any("s3cr3t" in m for m in messages)

    # --once --otlp-endpoint: one cycle, one push, the page on stdout; a bad URL is exit 2 in one line
    result = CliRunner().invoke(app, ["run", "--config", str(good), "--once", "--otlp-endpoint", receiver.url])
    assert result.exit_code == 0, result.output
    assert len(receiver.received) == 1 and receiver.received[0].headers["Authorization"] == SECRET
    assert "forge_exporter_otlp_exports_total" in result.stdout
    result = CliRunner().invoke(app, ["run", "--config", str(good), "--once", "--otlp-endpoint", "ftp://x"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().startswith("forge: error: --otlp-endpoint ftp://x: not an http(s) URL")
    result = CliRunner().invoke(app, ["run", "--config", str(good), "--once", "--otlp-endpoint",
                                      "http://forge:s3cr3t@127.0.0.1:4318"])
    assert result.exit_code == 2 and "credentials in the URL" in result.output and "s3cr3t" not in result.output
    result = CliRunner().invoke(app, ["run", "--config", str(good), "--once", "--otlp-endpoint", closed_port_url()])
    assert result.exit_code == 1 and "OTLP push failed" in result.output and "s3cr3t" not in result.output


# ----------------------------------------------------------------------------------------------- self-metrics

def test_the_exporters_self_metrics_are_exactly_the_catalogs_exporter_group(sim, receiver):
    """Every family the exporter serves is an engine or GPU signal, a cost series, or listed in the catalog's
    `exporter` scope with the same type and HELP — and every catalog entry is really served."""
    import pynvml

    class NoDriver:     # this machine has no NVIDIA driver either; spelled out so the test is the same on a GPU host
        NVMLError = pynvml.NVMLError

        @staticmethod
        def nvmlInit():
            raise pynvml.NVMLError_LibraryNotFound(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    receiver.answers.put((503, {"Retry-After": "0"}))
    cost = Cost(price_per_gpu_hour=2.0, gpus=1, accelerator="probe", capacity="on-demand", price_source="probe")
    up = Target(url=f"{sim}/metrics", name="sim-0", engine="vllm", model="tiny", labels=LABELS, cost=cost)
    down = Target(url=closed_port_url() + "/metrics", name="gone-0", engine="vllm", model="tiny")
    base = settings(sim, receiver.url)

    async def page() -> str:
        service = ExporterService(ExporterSettings(**{**base.__dict__, "targets": [up, down]}),
                                  gpu_collector=NvmlCollector(nvml=NoDriver))
        async with service:
            await service.collect_once()
            assert (await service.push_otlp_once()).outcome == "success"
            return service.render()

    text = asyncio.run(page())
    # From the TYPE/HELP lines themselves: prometheus_client's parser drops a counter's _total suffix.
    types = dict(line.split(" ", 3)[2:] for line in text.splitlines() if line.startswith("# TYPE "))
    helps = dict(line.split(" ", 3)[2:] for line in text.splitlines() if line.startswith("# HELP "))
    served = set(types)
    catalog_scoped = {s.name for s in CAT.signals.values() if s.scope in ("engine", "gpu")}
    self_metrics = set(served) - catalog_scoped - cost_series_names()
    exporter_group = {s.name for s in CAT.signals_in_scope("exporter")}
    assert self_metrics == exporter_group
    for name in exporter_group:
        assert types[name] == CAT.signals[name].type, name
        assert helps[name] == CAT.signals[name].help, name
    # the list, by name: per-target up, scrape duration, parse errors, samples, build info
    assert {"forge_engine_up", "forge_exporter_scrape_duration_seconds", "forge_exporter_scrape_failures_total",
            "forge_exporter_scrape_samples", "forge_exporter_build_info"} <= exporter_group


# ----------------------------------------------------------------------------------------------- spec decode page

def test_real_vllm_spec_decode_page_normalizes_to_the_catalogs_spec_signals():
    text = SPEC_PAGE.read_text(encoding="utf-8")
    assert text.startswith("# Forge fixture: a REAL /metrics page of vLLM 0.32")
    page = normalize(text, replica="r0")
    value = lambda name: page.families[name].only()   # noqa: E731
    drafts = value("forge_spec_decode_drafts_total")
    drafted = value("forge_spec_decode_draft_tokens_total")
    accepted = value("forge_spec_decode_accepted_tokens_total")
    per_position = {dict(k)["position"]: v for k, v in
                    page.families["forge_spec_decode_accepted_tokens_per_position_total"].series.items()}
    raw = prometheus_samples(text)

    def raw_value(name: str, **labels) -> float:
        return sum(v for (n, k), v in raw.items() if n == name and all(dict(k).get(a) == b for a, b in labels.items()))

    # the canonical values are the page's own numbers
    assert drafts == raw_value("vllm:spec_decode_num_drafts_total") > 0
    assert drafted == raw_value("vllm:spec_decode_num_draft_tokens_total") > 0
    assert accepted == raw_value("vllm:spec_decode_num_accepted_tokens_total") > 0
    assert sorted(per_position) == ["0", "1", "2"]          # num_speculative_tokens = 3
    assert sum(per_position.values()) == accepted
    # a draft proposes at most num_speculative_tokens tokens (fewer near max_tokens), and acceptance stops at
    # the first rejection, so per-position acceptance (accepted at position / drafts) can only fall
    assert drafts < drafted <= 3 * drafts
    per_position_rate = [per_position[p] / drafts for p in ("0", "1", "2")]
    assert 1 >= per_position_rate[0] >= per_position_rate[1] >= per_position_rate[2] > 0
    acceptance_rate = accepted / drafted                   # forge:spec_acceptance_rate
    mean_accepted_length = 1 + accepted / drafts           # forge:spec_mean_accepted_length (vLLM's definition)
    assert 0 < acceptance_rate <= 1 and 1 < mean_accepted_length <= 4
    assert mean_accepted_length == pytest.approx(1 + sum(per_position_rate))
    for d in ("forge:spec_acceptance_rate", "forge:spec_mean_accepted_length"):   # their counter inputs are here
        assert {n for n in CAT.derived[d].inputs() if n.endswith("_total")} <= set(page.families)
    # the pre-0.10 acceptance-rate gauge is superseded by the counters on this page, not reported missing
    assert "forge_spec_decode_acceptance_ratio" not in page.families
    # nothing the catalog maps for vLLM's spec decoding is missing from a real spec-decode page
    assert not {n for n in page.missing if "spec_decode" in n}


def test_catalog_refuses_an_exporter_signal_with_engine_sources(tmp_path):
    import yaml

    from forge.catalog import CATALOG_PATH, CatalogError, load_catalog

    raw = yaml.safe_load(CATALOG_PATH.read_text(encoding="utf-8"))
    raw["signals"]["forge_exporter_scrape_samples"]["sources"] = {
        "vllm": [{"metric": "vllm:num_requests_running", "cite": "vllm"}]}
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert "signals.forge_exporter_scrape_samples" in str(err.value) and "no sources" in str(err.value)
