"""The reference stack with real vLLM (CPU): two engines behind HAProxy, scraped by Prometheus through the Forge
exporter, alerting through Alertmanager. One stack for the module (two vLLM start-ups overlap: ~2 min on 2
cores); the tests run in file order and the last one takes it down. The simulator stack (test_stack.py) covers
the rest of the stack's behaviour; this module proves the same wiring holds with the real engine."""

from __future__ import annotations

import os
import signal
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from helpers import wait_for

from forge.reference_stack import model_build, stack
from forge.reference_stack.vllm_engine import REPO_ROOT, parse_cores, vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.stack, pytest.mark.timeout(600)]
MODEL_DIR = REPO_ROOT / model_build.DEFAULT_MODEL_DIR


def _get_json(url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    return stack.http_json(url, timeout_s=timeout, body=body)


def _query(state, promql: str) -> list[dict]:
    return _get_json(f"{state.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))["data"][
        "result"]


def _complete(gateway_url: str, prompt: str = "hello stack") -> dict:
    return _get_json(f"{gateway_url}/v1/completions",
                     {"model": "tiny", "prompt": prompt, "max_tokens": 8, "ignore_eos": True})


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"{python} missing — run `make vllm` first", pytrace=False)
    model_dir = model_build.ensure_built(python, MODEL_DIR)
    tmp = tmp_path_factory.mktemp("vllm-stack")
    # Eager mode: no torch.compile warm-up, about a minute less per start; the wiring under test is the same.
    plan = stack.StackPlan(state_dir=tmp / "state", engine="vllm", replicas=2, ports=stack.Ports.free(2),
                           model_dir=model_dir, vllm_args=["--enforce-eager"])
    started = time.monotonic()
    try:
        state = stack.up(plan)
        print(f"\nreference stack with 2 real vLLM replicas ready in {time.monotonic() - started:.0f} s")
        yield state
    finally:
        stack.down(plan.state_dir)  # always: also after a failed test or a failed start


def test_real_completions_through_the_gateway(running):
    served = set()
    for i in range(6):  # round robin over both replicas
        answer = _complete(running.gateway_url, f"request {i}")
        assert answer["usage"]["completion_tokens"] == 8
        assert answer["model"] == "tiny"
        served.add(answer["id"])
    assert len(served) == 6


def _pinned_cores(component: stack.Component) -> set[int]:
    """Cores the engine's threads are pinned to, measured: the union of every thread affinity (all processes of the
    engine's group: API server, EngineCore, workers) narrower than what this machine allows. vLLM's workers bind
    their OpenMP threads to VLLM_CPU_OMP_THREADS_BIND; the unpinned threads allow every core and are left out."""
    allowed = set(os.sched_getaffinity(0))
    pinned: set[int] = set()
    for pid in stack._group_members(component.pid):
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                affinity = os.sched_getaffinity(int(task.name))
            except OSError:  # the thread ended meanwhile
                continue
            if affinity < allowed:
                pinned |= affinity
    return pinned


def test_each_replica_runs_on_its_own_cores(running):
    """Two TP=1 replicas with vLLM's "auto" binding both pinned their worker to core 0 (one start-up failed); the
    stack now gives each its own cores, and the engines' threads really run there (after the completions above,
    so every worker has run its OpenMP threads)."""
    engines = running.engines()
    binds = [c.env["VLLM_CPU_OMP_THREADS_BIND"] for c in engines]
    recorded = [set(parse_cores(b.replace("|", ","))) for b in binds]
    pinned = [_pinned_cores(c) for c in engines]
    print(f"\nVLLM_CPU_OMP_THREADS_BIND per replica: {binds}; threads pinned to: {[sorted(p) for p in pinned]}")
    if len(os.sched_getaffinity(0)) < 2:  # one core: nothing to split; the stack says the replicas contend
        assert any("contend" in note for note in running.notes), running.notes
        return
    assert recorded[0].isdisjoint(recorded[1]), binds
    assert all(pinned), f"no thread of an engine is pinned: {pinned}"
    assert pinned[0] <= recorded[0] and pinned[1] <= recorded[1], (pinned, binds)
    assert pinned[0].isdisjoint(pinned[1]), pinned


def test_prometheus_scrapes_every_target_and_loaded_the_rules(running):
    def all_up():
        targets = _get_json(f"{running.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        return targets if targets and all(t["health"] == "up" for t in targets) else None

    targets = wait_for(all_up, 60, 1.0)
    assert targets, _get_json(f"{running.prometheus_url}/api/v1/targets")
    assert sorted(t["labels"]["job"] for t in targets) == ["alertmanager", "engines", "engines", "forge-exporter",
                                                           "haproxy", "prometheus"]
    groups = _get_json(f"{running.prometheus_url}/api/v1/rules")["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    expected = {r["alert"] for g in yaml.safe_load(stack.DEFAULT_RULES.read_text())["groups"]
                for r in g["rules"] if "alert" in r}
    assert expected <= loaded
    assert all(r["health"] != "err" for g in groups for r in g["rules"])


def test_real_vllm_metrics_reach_prometheus_as_canonical_signals(running):
    def ready():
        engine_up = {s["metric"]["replica"]: s["value"][1] for s in _query(running, "forge_engine_up")}
        generated = _query(running, "sum(forge_generation_tokens_total)")
        native = _query(running, "vllm:num_requests_running")
        return engine_up == {"s0": "1", "s1": "1"} and generated and float(generated[0]["value"][1]) >= 48 \
            and len(native) == 2
    assert wait_for(ready, 60, 1.0), (_query(running, "forge_engine_up"),
                                      _query(running, "sum(forge_generation_tokens_total)"))
    # Histograms stay histograms: the TTFT quantile is computable from the canonical buckets.
    ttft = _query(running, "histogram_quantile(0.95, sum by (le) (forge_ttft_seconds_bucket))")
    assert ttft and float(ttft[0]["value"][1]) > 0


def test_a_stopped_replica_is_taken_out_and_shows_down(running):
    victim = running.component("engine-s1")
    gateway = stack.Gateway(running)
    t0 = time.monotonic()
    victim.signal_group(signal.SIGKILL)  # the engine and its workers, as an OOM kill or a node loss would
    down_after = wait_for(lambda: (time.monotonic() - t0) if {s["name"]: s["status"] for s in gateway.servers()}
                          .get("s1", "").startswith("DOWN") else None, 15, 0.1)
    assert down_after is not None, gateway.servers()
    print(f"\nHAProxy marked the killed vLLM replica DOWN after {down_after:.1f} s")
    for i in range(4):  # traffic continues on the survivor
        assert _complete(running.gateway_url, f"after {i}")["usage"]["completion_tokens"] == 8

    def down_in_prometheus():
        up = {s["metric"]["replica"]: s["value"][1] for s in _query(running, 'up{job="engines"}')}
        engine_up = {s["metric"]["replica"]: s["value"][1] for s in _query(running, "forge_engine_up")}
        return up == {"s0": "1", "s1": "0"} and engine_up == {"s0": "1", "s1": "0"}
    assert wait_for(down_in_prometheus, 45, 1.0), (_query(running, 'up{job="engines"}'),
                                                   _query(running, "forge_engine_up"))


def test_down_leaves_no_process_behind(running):
    pids = [c.pid for c in running.components]
    assert "engine-s0" in stack.down(running.state_dir)
    assert wait_for(lambda: not [pid for pid in pids if stack._group_members(pid)], 30, 0.5)
