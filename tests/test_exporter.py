"""Engine collector against real loopback HTTP targets: normal pages, and every way a target misbehaves."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge.catalog import get_catalog
from forge.exporters.config import ExporterSettings, Target
from forge.exporters.normalize import normalize
from forge.exporters.pageserver import PageServer
from forge.exporters.scrape import ScrapeFailure, fetch_page, new_session
from forge.exporters.server import ExporterService

pytestmark = pytest.mark.timeout(60)
METRICS = Path(__file__).resolve().parent / "fixtures" / "metrics"
EXPORTER_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporter"
VLLM = (METRICS / "vllm-0.32.txt").read_text(encoding="utf-8")
VLLM_OLD = (METRICS / "vllm-0.6.txt").read_text(encoding="utf-8")
SGLANG = (METRICS / "sglang.txt").read_text(encoding="utf-8")
TIMEOUT_S = 1.0
LIMIT_BYTES = 10_000_000


def settings_for(*targets: Target, **overrides) -> ExporterSettings:
    return ExporterSettings(targets=list(targets), listen_port=0, timeout_seconds=TIMEOUT_S,
                            max_page_bytes=LIMIT_BYTES, **overrides)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition page; parsing it also proves the page is valid Prometheus text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series in the exported page: {key}"
            out[key] = s.value
    return out


def with_labels(page: dict, name: str, **labels) -> dict[tuple, float]:
    return {k: v for k, v in page.items() if k[0] == name and all(dict(k[1]).get(a) == b for a, b in labels.items())}


def one(page: dict, name: str, **labels) -> float:
    found = with_labels(page, name, **labels)
    assert len(found) == 1, f"{name} {labels}: {len(found)} series"
    return next(iter(found.values()))


def engine_series_of(page: dict, replica: str) -> dict:
    """Canonical engine series (catalog names, _bucket/_sum/_count folded) that carry this replica."""
    names = {s.name for s in get_catalog().signals_in_scope("engine")}
    return {k: v for k, v in page.items() if re.sub(r"_(bucket|sum|count)$", "", k[0]) in names | {k[0]}
            and k[0].startswith("forge_") and not k[0].startswith("forge_exporter") and k[0] != "forge_engine_up"
            and dict(k[1]).get("replica") == replica}


async def cycle(service: ExporterService, times: int = 1) -> dict:
    for _ in range(times):
        await service.collect_once()
    return samples(service.render())


def run(coro):
    return asyncio.run(coro)


# ----------------------------------------------------------------------------------------------- fetching

def test_a_50mb_page_is_refused_while_streaming_not_read_whole():
    with PageServer() as server:
        url = server.route("/huge", stream_bytes=50_000_000)

        async def go():
            async with new_session() as session:
                return await fetch_page(session, url, timeout_seconds=20, max_bytes=LIMIT_BYTES)

        with pytest.raises(ScrapeFailure) as failure:
            run(go())
    assert failure.value.reason == "too_large"
    # The client stopped at the limit (plus at most one chunk), and the server never got to write it all.
    assert LIMIT_BYTES < failure.value.bytes_read <= LIMIT_BYTES + 65536
    assert server.bytes_sent["/huge"] < 50_000_000


def test_a_declared_oversized_page_is_refused_before_reading_the_body():
    with PageServer() as server:
        url = server.route("/big", text="x" * (LIMIT_BYTES + 1))

        async def go():
            async with new_session() as session:
                return await fetch_page(session, url, timeout_seconds=5, max_bytes=LIMIT_BYTES)

        with pytest.raises(ScrapeFailure) as failure:
            run(go())
    assert failure.value.reason == "too_large" and failure.value.bytes_read == 0
    assert "declares" in str(failure.value)


def test_fetch_honours_the_deadline_on_a_slow_target():
    with PageServer() as server:
        url = server.route("/slow", text=VLLM, delay_seconds=5)

        async def go():
            async with new_session() as session:
                return await fetch_page(session, url, timeout_seconds=0.5)

        started = time.monotonic()
        with pytest.raises(ScrapeFailure) as failure:
            run(go())
    assert failure.value.reason == "timeout"
    assert time.monotonic() - started < 3


# ----------------------------------------------------------------------------------------------- one cycle

BAD_TARGETS = {
    # replica: (route options, expected reason)
    "dead": (None, "connection_refused"),
    "slow": ({"text": VLLM, "delay_seconds": 5}, "timeout"),
    "html": ({"text": "<!doctype html><html><body>Not here</body></html>", "content_type": "text/html"},
             "invalid_page"),
    "garbage": ({"text": "vllm:num_requests_running{model_name=\"m\" 3\n\x7f\x01 ???\n"}, "invalid_page"),
    "huge": ({"stream_bytes": 50_000_000}, "too_large"),
    "duplicate": ({"text": "# TYPE vllm:num_requests_running gauge\n"
                           "vllm:num_requests_running{model_name=\"m\"} 3\n"
                           "vllm:num_requests_running{model_name=\"m\"} 5\n"}, "duplicate_series"),
    "conflicting-type": ({"text": "# TYPE vllm:num_requests_running gauge\n"
                                  "vllm:num_requests_running{model_name=\"a\"} 3\n"
                                  "# TYPE vllm:num_preemptions_total counter\n"
                                  "vllm:num_preemptions_total{model_name=\"a\"} 1\n"
                                  "# TYPE vllm:num_requests_running counter\n"
                                  "vllm:num_requests_running{model_name=\"b\"} 5\n"}, "duplicate_series"),
    "http-500": ({"text": "boom", "status": 500}, "http_status"),
    "not-an-engine": ({"text": "# TYPE node_load1 gauge\nnode_load1 0.5\n"}, "unknown_engine"),
}


def test_bad_targets_are_down_with_their_reason_and_the_good_one_is_served_exactly():
    with PageServer() as server, PageServer() as closed:
        dead_url = closed.url("/metrics")
        closed.close()  # a port nobody listens on any more
        targets = [Target(url=server.route("/good", text=VLLM), name="good", labels={"team": "search"})]
        for replica, (route, _) in BAD_TARGETS.items():
            url = dead_url if route is None else server.route(f"/{replica}", **route)
            targets.append(Target(url=url, name=replica, labels={"team": "search"}))

        async def go():
            async with ExporterService(settings_for(*targets)) as service:
                started = time.monotonic()
                page = await cycle(service)
                return page, time.monotonic() - started, service.engines.targets_report()

        page, elapsed, report = run(go())

    # A cycle is bounded by the per-target deadline, however many targets misbehave.
    assert elapsed < TIMEOUT_S + 2.0
    assert one(page, "forge_engine_up", replica="good", engine="vllm", team="search") == 1.0
    for replica, (_, reason) in BAD_TARGETS.items():
        assert one(page, "forge_engine_up", replica=replica) == 0.0, replica
        assert one(page, "forge_exporter_scrape_error_info", target=replica) == 1.0
        assert set(dict(k[1])["reason"] for k in with_labels(page, "forge_exporter_scrape_error_info",
                                                             target=replica)) == {reason}, replica
        assert one(page, "forge_exporter_scrape_failures_total", target=replica, reason=reason) == 1.0
        assert not engine_series_of(page, replica), f"{replica} is down but exports engine series"
    details = {r["target"]: r["detail"] for r in report}
    assert all(details[name] and "\n" not in details[name] for name in BAD_TARGETS)

    # The good target's series are exactly what the normalizer makes of its page: no value lost or invented.
    expected = samples(normalize(VLLM, replica="good", extra_labels={"team": "search"}).to_prometheus_text())
    assert engine_series_of(page, "good") == expected
    assert one(page, "forge_exporter_series", target="good") == len(
        [k for k in expected if not k[0].endswith(("_bucket", "_sum", "_count"))]) + len(
        {(k[0][:-6], tuple(p for p in k[1] if p[0] != "le")) for k in expected if k[0].endswith("_bucket")})
    assert one(page, "forge_exporter_scrape_samples", target="good") == sum(
        1 for line in VLLM.splitlines() if line and not line.startswith("#"))


def test_histograms_stay_histograms_with_the_engines_bucket_bounds():
    with PageServer() as server:
        target = Target(url=server.route("/m", text=VLLM), name="r0")

        async def go():
            async with ExporterService(settings_for(target)) as service:
                return await cycle(service)

        page = run(go())
    source = {float(m.group(1)) for m in re.finditer(r'vllm:time_to_first_token_seconds_bucket\{[^}]*le="([^"]+)"',
                                                     VLLM)}
    exported = {float(dict(k[1])["le"]) for k in with_labels(page, "forge_ttft_seconds_bucket", replica="r0")}
    assert exported == source and len(source) > 5
    count = one(page, "forge_ttft_seconds_count", replica="r0")
    assert one(page, "forge_ttft_seconds_bucket", replica="r0", le="+Inf") == count


def test_a_target_that_recovers_comes_back_up_and_one_that_fails_loses_its_series():
    with PageServer() as server:
        target = Target(url=server.route("/m", text="<html>starting</html>"), name="r0")

        async def go():
            async with ExporterService(settings_for(target)) as service:
                first = await cycle(service)
                server.route("/m", text=VLLM)
                second = await cycle(service)
                server.route("/m", text="", status=503)
                third = await cycle(service)
                return first, second, third

        first, second, third = run(go())
    assert one(first, "forge_engine_up", replica="r0") == 0.0 and not engine_series_of(first, "r0")
    assert one(second, "forge_engine_up", replica="r0") == 1.0 and engine_series_of(second, "r0")
    assert not with_labels(second, "forge_exporter_scrape_error_info", target="r0")
    assert one(third, "forge_engine_up", replica="r0") == 0.0 and not engine_series_of(third, "r0")
    assert one(third, "forge_exporter_scrape_failures_total", target="r0", reason="invalid_page") == 1.0
    assert one(third, "forge_exporter_scrape_failures_total", target="r0", reason="http_status") == 1.0


def restarted(page: str) -> str:
    """The same engine right after a restart: every counter and histogram sample back at 0."""
    counters = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) (?:counter|histogram)$", page, re.M)}
    out = []
    for line in page.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        if not line.startswith("#") and line and (name in counters or base in counters):
            line = line.rsplit(" ", 1)[0] + " 0"
        out.append(line)
    return "\n".join(out) + "\n"


def test_an_engine_restart_passes_the_reset_counters_through_and_counts_the_reset():
    before_tokens = normalize(VLLM).families["forge_prompt_tokens_total"].only()
    assert before_tokens > 0, "the fixture must have traffic for this test to mean anything"
    with PageServer() as server:
        target = Target(url=server.route("/m", text=VLLM), name="r0")

        async def go():
            async with ExporterService(settings_for(target)) as service:
                first = await cycle(service)
                server.route("/m", text=restarted(VLLM))
                second = await cycle(service)
                third = await cycle(service)
                return first, second, third

        first, second, third = run(go())
    assert one(first, "forge_prompt_tokens_total", replica="r0") == before_tokens
    assert one(first, "forge_exporter_counter_resets_total", target="r0") == 0
    # After the restart the exporter says what the engine says (0), not the old total nor a sum of both.
    assert one(second, "forge_prompt_tokens_total", replica="r0") == 0
    assert one(second, "forge_ttft_seconds_count", replica="r0") == 0
    assert one(second, "forge_engine_up", replica="r0") == 1.0
    assert one(second, "forge_exporter_counter_resets_total", target="r0") == 1
    assert one(third, "forge_exporter_counter_resets_total", target="r0") == 1   # counted once, not per cycle


def test_a_target_switching_engine_versions_exports_only_the_new_pages_series():
    with PageServer() as server:
        target = Target(url=server.route("/m", text=VLLM_OLD), name="r0", engine="vllm")

        async def go():
            async with ExporterService(settings_for(target)) as service:
                old = await cycle(service)
                server.route("/m", text=VLLM)
                new = await cycle(service)
                return old, new

        old, new = run(go())
    old_only = {"forge_prefix_cache_hit_ratio", "forge_spec_decode_acceptance_ratio"}
    assert old_only <= {k[0] for k in engine_series_of(old, "r0")}
    assert not old_only & {k[0] for k in engine_series_of(new, "r0")}, "stale series of the old version survived"
    assert engine_series_of(new, "r0") == samples(normalize(VLLM, replica="r0").to_prometheus_text())
    assert one(new, "forge_engine_up", replica="r0", engine="vllm") == 1.0


def test_a_target_that_turns_into_another_engine_is_down_not_relabelled():
    with PageServer() as server:
        target = Target(url=server.route("/m", text=VLLM), name="r0", engine="vllm")

        async def go():
            async with ExporterService(settings_for(target)) as service:
                await cycle(service)
                server.route("/m", text=SGLANG)
                return await cycle(service), service.engines.targets_report()

        page, report = run(go())
    assert one(page, "forge_engine_up", replica="r0", engine="vllm") == 0.0
    assert one(page, "forge_exporter_scrape_error_info", target="r0", reason="engine_mismatch") == 1.0
    assert not engine_series_of(page, "r0")
    assert "configured as vllm" in report[0]["detail"] and "sglang" in report[0]["detail"]


def test_metrics_are_served_while_a_slow_target_is_still_being_scraped():
    with PageServer() as server:
        targets = [Target(url=server.route("/fast", text=VLLM), name="fast"),
                   Target(url=server.route("/slow", text=VLLM, delay_seconds=3), name="slow")]

        async def go():
            settings = settings_for(*targets, interval_seconds=60)
            settings = ExporterSettings(**{**settings.__dict__, "timeout_seconds": 2.0})
            async with ExporterService(settings) as service:
                await service.collect_once()                       # first cycle: fast up, slow timed out
                in_flight = asyncio.create_task(service.collect_once())
                await asyncio.sleep(0.3)
                started = time.monotonic()
                body, headers = await asyncio.to_thread(_get, service.url + "/metrics")
                waited = time.monotonic() - started
                assert not in_flight.done()
                await in_flight
                targets_json, _ = await asyncio.to_thread(_get, service.url + "/targets")
                return body, headers, waited, json.loads(targets_json)

        body, headers, waited, targets_json = run(go())
    assert waited < 1.0, "a /metrics request waited for a scrape"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    page = samples(body)
    assert one(page, "forge_engine_up", replica="fast") == 1.0
    assert one(page, "forge_engine_up", replica="slow") == 0.0
    status = {t["target"]: t for t in targets_json["targets"]}
    assert status["slow"]["reason"] == "timeout" and status["fast"]["up"] is True


def _get(url: str) -> tuple[str, dict]:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only: the exporter under test
        return response.read().decode(), dict(response.headers)


def test_service_binds_loopback_by_default():
    settings = ExporterSettings(targets=[])
    assert settings.listen_host == "127.0.0.1" and settings.listen_port == 9400


def test_dcgm_exporter_pass_through_keeps_dcgm_names_and_labels():
    page_text = (EXPORTER_FIXTURES / "dcgm-exporter.txt").read_text(encoding="utf-8")
    with PageServer() as server:
        targets = [Target(url=server.route("/dcgm", text=page_text), name="dcgm-exporter", kind="dcgm", engine="dcgm"),
                   Target(url=server.route("/vllm", text=VLLM), name="r0", labels={"team": "search"})]

        async def go():
            async with ExporterService(settings_for(*targets)) as service:
                return await cycle(service)

        page = run(go())
    util = with_labels(page, "DCGM_FI_DEV_GPU_UTIL")
    assert sorted(util.values()) == [0.0, 97.0]
    for key in util:
        labels = dict(key[1])
        assert set(labels) == {"gpu", "UUID", "device", "modelName", "Hostname"}   # pci_bus_id etc. dropped
        assert labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert one(page, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 79.0
    assert not with_labels(page, "forge_engine_up", replica="dcgm-exporter")   # not an engine
    assert one(page, "forge_exporter_scrape_samples", target="dcgm-exporter") == 20
    assert one(page, "forge_engine_up", replica="r0") == 1.0
