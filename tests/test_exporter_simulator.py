"""End to end: the exporter over the vLLM-exact simulator (two engines + its dcgm-style page), over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge.exporters.config import ExporterSettings, Target
from forge.exporters.server import ExporterService
from forge.reference_stack.simulator import serve

pytestmark = pytest.mark.timeout(90)


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:   # loopback: the simulator under test
        return json.loads(response.read())


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_exporter_reports_what_the_simulated_engines_served():
    with serve(port=0, engines=2) as sim:
        served = {0: 0, 1: 0}
        for i, max_tokens in ((0, 5), (1, 7), (1, 4)):
            usage = _post(f"{sim}/engines/{i}/v1/completions",
                          {"model": "tiny", "prompt": "hello world", "max_tokens": max_tokens, "ignore_eos": True})
            served[i] += usage["usage"]["completion_tokens"]
        targets = [Target(url=f"{sim}/engines/{i}/metrics", name=f"sim-{i}", engine="vllm",
                          labels={"team": "forge", "cost_center": "cc-0"}) for i in (0, 1)]
        targets.append(Target(url=f"{sim}/gpu-metrics", name="dcgm-exporter", kind="dcgm", engine="dcgm"))

        async def scrape() -> str:
            settings = ExporterSettings(targets=targets, listen_port=0, timeout_seconds=5)
            async with ExporterService(settings) as service:
                await service.collect_once()
                return await asyncio.to_thread(_get, service.url + "/metrics")

        page = asyncio.run(scrape())
    values: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels) -> float:
        found = [v for (n, k), v in values.items() if n == name and all(dict(k).get(a) == b for a, b in labels.items())]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    for i in (0, 1):
        assert value("forge_engine_up", replica=f"sim-{i}", engine="vllm", team="forge") == 1.0
        assert value("forge_generation_tokens_total", replica=f"sim-{i}", model="tiny") == served[i]
        finished = sum(v for (n, k), v in values.items() if n == "forge_requests_total"
                       and dict(k)["replica"] == f"sim-{i}" and dict(k)["outcome"] == "success")   # all reasons
        assert finished == (1 if i == 0 else 2)
        assert value("forge_e2e_latency_seconds_count", replica=f"sim-{i}") == (1 if i == 0 else 2)
    assert any(n == "DCGM_FI_DEV_GPU_UTIL" for n, _ in values)
