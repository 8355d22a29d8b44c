"""The alerts proven live: faults induced on the reference stack, with traffic running, reach Alertmanager's receiver
as the expected alert, with the right labels, within the time the rule implies.

One simulator stack for the module (four replicas behind HAProxy, the Forge exporter, Prometheus, Alertmanager,
the webhook receiver), faults on three of them at once, while a client keeps sending completions through the
gateway. Every replica has a small KV cache (128 blocks of 16 tokens) and batch (4 sequences):
- s0: engine hung (simulator `hang` with two requests in its batch) plus XID 79 on its simulated GPU, and its
  new requests answered 500 (`error_rate` 1: a hung engine would hold them, and HAProxy's leastconn would then
  send it almost nothing);
- s1: 16 clients of requests that outgrow the cache (300 prompt + 600 output tokens): they evict each other
  (preemptions) and queue, plus XID 13;
- s3: 16 clients of prompt-heavy requests (480 + 32 tokens): four of them fill 94-100% of the cache, steadily;
  out of the gateway's rotation, since one short gateway request in its 4-sequence batch drops usage to ~77%;
- s2: healthy, serving the gateway's traffic: it must raise none of the alerts.

Rule files are test copies of the real generated rules (alerts/reference-stack-rules.yaml): the same alert names,
expressions and labels, on a clock SPEEDUP times faster — every range window and `for:` divided by SPEEDUP, with
floors so a window still holds several scrapes. The deadline of each alert is what its shortened rule implies
(window the condition needs + `for:`) plus the pipeline: exporter and Prometheus scrape, rule evaluation,
Alertmanager's group_wait. Prints the measured times.
"""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import need_stack_binaries, wait_for

from forge.loader import load
from forge.reference_stack import stack
from forge.reference_stack.receiver import alert_events

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

need_stack_binaries()

SPEEDUP = 12
MIN_WINDOW_S = 20     # four 5 s scrapes: rate()/increase() need two, a frozen counter must be seen frozen twice
MIN_FOR_S = 10        # two rule evaluations
SCRAPE_S = 5          # the stack's exporter interval, scrape interval and evaluation interval (StackPlan defaults)
# Engine -> exporter -> Prometheus scrape -> next rule evaluation -> Alertmanager group_wait (1 s) -> receiver.
PIPELINE_S = 3 * SCRAPE_S + 1
SLACK_S = 20          # a loaded 2-core machine: late scrapes, a slow evaluation, the load ramping up
MODEL = load(stack.DEPLOY_FILE).deployment.model.name    # the exporter labels engine series with deploy.yaml's model

# Small KV cache and batch on every replica; the gateway's short requests (one or two blocks, 4 at a time) stay
# far from either limit. Request shapes measured on the simulator alone (12 s at 4 samples/s, 16 clients):
# 300 + 600 tokens: 1.25 preemptions/s against 0.7 finished requests/s, never fewer than 11 waiting;
# 480 + 32 tokens: cache usage 0.97-1.00 at every sample (four prompts of 30 blocks + their 2 blocks of output
# fit exactly, so nothing is preempted and a finished request's blocks are refilled in the same scheduler pass).
SIM_ARGS = ["--kv-blocks", "128", "--max-num-seqs", "4", "--max-model-len", "1024"]
CLIENTS = 16
EVICTING = {"model": "tiny", "prompt": "load " * 240, "max_tokens": 600, "ignore_eos": True}    # 300 tokens
FILLING = {"model": "tiny", "prompt": "fill " * 384, "max_tokens": 32, "ignore_eos": True}      # 480 tokens
HELD_OUTPUT = 900

TESTED = ("ForgeEngineHung", "ForgeGPUXidCritical", "ForgeGPUXidError", "ForgeKVCacheNearFull",
          "ForgePreemptionStorm", "ForgeQueueBuildUp", "ForgeAvailabilitySLOFastBurn")


# ----------------------------------------------------------------------------------------------- fast rules

def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]


def _shorter(duration: str, floor_s: int) -> int:
    return max(floor_s, math.ceil(_seconds(duration) / SPEEDUP))


@dataclass(frozen=True)
class FastRule:
    alert: str
    window_s: int     # the longest range window of the expression (0: an instant condition)
    for_s: int
    rule: dict

    def implied_s(self, windowed: bool) -> int:
        """How long the shortened rule needs after the fault: the window the condition has to hold over (for
        "never emptied" / "frozen over" conditions) plus `for:`."""
        return (self.window_s if windowed else 0) + self.for_s


def fast_copy(rule: dict) -> FastRule:
    windows = [_shorter(d, MIN_WINDOW_S) for d in re.findall(r"\[(\d+[smhd])\]", rule["expr"])]
    expr = re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{_shorter(m[1], MIN_WINDOW_S)}s]", rule["expr"])
    for_s = _shorter(rule["for"], MIN_FOR_S) if rule.get("for") else 0
    fast = {**rule, "expr": expr}
    fast.pop("for", None)
    if for_s:
        fast["for"] = f"{for_s}s"
    return FastRule(rule["alert"], max(windows, default=0), for_s, fast)


def fast_recording_copy(rule: dict) -> dict:
    """A recording rule on the fast clock: same name (the alerts read it by name), every window shortened."""
    return {**rule, "expr": re.sub(r"\[(\d+[smhd])\]", lambda m: f"[{_shorter(m[1], MIN_WINDOW_S)}s]", rule["expr"])}


def fast_rules(directory: Path) -> tuple[Path, dict[str, FastRule]]:
    generated = yaml.safe_load(stack.DEFAULT_RULES.read_text())
    every = [r for g in generated["groups"] for r in g["rules"]]
    rules = {r["alert"]: fast_copy(r) for r in every if r.get("alert") in TESTED}
    assert set(rules) == set(TESTED), "an alert under test is missing from the generated rules"
    # The SLO burn alerts read recording rules (model:forge_error_ratio:ratio_rate1h, ...): shorten those they use.
    recorded = [fast_recording_copy(r) for r in every if "record" in r
                and any(re.search(rf"\b{re.escape(r['record'])}\b", f.rule["expr"]) for f in rules.values())]
    path = directory / "live-test-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "forge-live-test-recorded", "rules": recorded},
                                               {"name": "forge-live-test", "rules": [r.rule for r in
                                                                                     rules.values()]}]}))
    return path, rules


def test_fast_copies_keep_the_expression_and_shorten_only_windows_and_for():
    generated = {r["alert"]: r for g in yaml.safe_load(stack.DEFAULT_RULES.read_text())["groups"]
                 for r in g["rules"] if "alert" in r}
    hung = fast_copy(generated["ForgeEngineHung"])
    assert (hung.window_s, hung.for_s) == (20, 10)            # 2m -> 10 s -> floor 20 s; 1m -> 5 s -> floor 10 s
    assert hung.rule["expr"] == generated["ForgeEngineHung"]["expr"].replace("[2m]", "[20s]")
    queue = fast_copy(generated["ForgeQueueBuildUp"])
    assert (queue.window_s, queue.for_s) == (50, 25)          # 10m and 5m / 12
    assert queue.rule["labels"] == generated["ForgeQueueBuildUp"]["labels"]
    assert fast_copy(generated["ForgeGPUXidCritical"]).rule["expr"] == generated["ForgeGPUXidCritical"]["expr"]
    recorded = {r["record"]: r for g in yaml.safe_load(stack.DEFAULT_RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    one_hour = fast_recording_copy(recorded["model:forge_error_ratio:ratio_rate1h"])
    assert one_hour["expr"] == recorded["model:forge_error_ratio:ratio_rate1h"]["expr"].replace("[1h]", "[300s]")


# ----------------------------------------------------------------------------------------------- load

class Clients:
    """Threads sending completions until stopped; counts outcomes. Errors and timeouts are expected under faults."""

    def __init__(self):
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def loop(self, url: str, body: dict, timeout_s: float | None, n: int = 1, once: bool = False) -> None:
        def run() -> None:
            with httpx.Client(timeout=timeout_s) as client:
                while not self.stop.is_set():
                    try:
                        code = client.post(f"{url}/v1/completions", json=body).status_code
                        self._count(str(code))
                    except httpx.HTTPError as exc:
                        self._count(type(exc).__name__)
                        self.stop.wait(0.2)
                    if once:
                        return

        for _ in range(n):
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self, timeout_s: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _engine_gauge(engine_url: str, name: str) -> float:
    text = httpx.get(f"{engine_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _fault(engine_url: str, body: dict) -> None:
    httpx.post(f"{engine_url}/_forge/faults", json=body, timeout=5).raise_for_status()


def _query(state, promql: str) -> float:
    url = f"{state.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result = stack.http_json(url, timeout_s=10)["data"]["result"]
    return sum(float(r["value"][1]) for r in result)


# ----------------------------------------------------------------------------------------------- the run

@dataclass
class Expected:
    alert: str
    replica: str | None   # None: an alert by model (the SLO burn alerts), not by replica
    severity: str
    windowed: bool        # the condition must hold over the whole window (frozen / never emptied)
    started_unix: float = 0.0
    recorded: bool = False  # reads recording rules: one more evaluation, and rate() needs a second sample


def deadline_s(rules: dict[str, FastRule], exp: Expected) -> float:
    return rules[exp.alert].implied_s(exp.windowed) + PIPELINE_S + SLACK_S + (2 * SCRAPE_S if exp.recorded else 0)


@dataclass
class LiveRun:
    state: object
    rules: dict[str, FastRule]
    expected: list[Expected]
    events: list[dict]
    traffic: Clients
    error_rate_5xx: float
    error_rate_engine_errors: float

    def first(self, alert: str, replica: str) -> dict | None:
        return next((e for e in self.events if e["alertname"] == alert and e["status"] == "firing"
                     and e["labels"].get("replica") == replica), None)

    def deadline_s(self, exp: Expected) -> float:
        return deadline_s(self.rules, exp)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alerts-live")
    rule_file, rules = fast_rules(tmp)
    plan = stack.StackPlan(state_dir=tmp / "state", engine="sim", replicas=4, ports=stack.Ports.free(4),
                           rule_files=[rule_file], sim_args=SIM_ARGS)
    traffic = Clients()
    state = None
    try:
        state = stack.up(plan)
        s0, s1, _, s3 = (state.component(f"engine-s{i}").url for i in range(4))
        # Traffic through the gateway all along: short completions, 4 at a time.
        traffic.loop(state.gateway_url, {"model": "tiny", "prompt": "hello live alerts", "max_tokens": 16},
                     timeout_s=10, n=4)
        assert wait_for(lambda: _query(state, "sum(forge_engine_up)") == 4, 30, 0.5), \
            "the exporter never reported all four replicas up"
        expected = [Expected("ForgeEngineHung", "s0", "page", windowed=True),
                    Expected("ForgeGPUXidCritical", "s0", "page", windowed=False),
                    Expected("ForgeGPUXidError", "s1", "ticket", windowed=False),
                    Expected("ForgeKVCacheNearFull", "s3", "ticket", windowed=False),
                    Expected("ForgePreemptionStorm", "s1", "ticket", windowed=False),
                    Expected("ForgeQueueBuildUp", "s1", "ticket", windowed=True),
                    Expected("ForgeAvailabilitySLOFastBurn", None, "page", windowed=False, recorded=True)]
        by_name = {e.alert: e for e in expected}

        # s0: two long requests in the batch, then the scheduler stops (tokens freeze, /health stays 200).
        traffic.loop(s0, {"model": "tiny", "prompt": "hold", "max_tokens": HELD_OUTPUT, "ignore_eos": True},
                     timeout_s=None, n=2, once=True)
        assert wait_for(lambda: _engine_gauge(s0, "vllm:num_requests_running") >= 2, 10, 0.02)
        _fault(s0, {"mode": "hang"})
        by_name["ForgeEngineHung"].started_unix = time.time()
        _fault(s0, {"mode": "xid", "xid": 79})
        by_name["ForgeGPUXidCritical"].started_unix = time.time()
        # Failed in the engine (counted as vLLM counts it: finished_reason="error"), so the availability SLI sees it.
        _fault(s0, {"mode": "error_rate", "rate": 1.0, "layer": "engine"})
        by_name["ForgeAvailabilitySLOFastBurn"].started_unix = time.time()
        # s1: more clients than --max-num-seqs, each request outgrowing its share of the KV cache.
        traffic.loop(s1, EVICTING, timeout_s=120, n=CLIENTS)
        by_name["ForgePreemptionStorm"].started_unix = by_name["ForgeQueueBuildUp"].started_unix = time.time()
        # s3: prompts that fill the cache.
        stack.Gateway(state).drain("s3")
        traffic.loop(s3, FILLING, timeout_s=120, n=CLIENTS)
        by_name["ForgeKVCacheNearFull"].started_unix = time.time()
        _fault(s1, {"mode": "xid", "xid": 13})
        by_name["ForgeGPUXidError"].started_unix = time.time()

        def all_arrived():
            events = alert_events(state.receiver_file)
            got = {(e["alertname"], e["labels"].get("replica")) for e in events if e["status"] == "firing"}
            return events if all((x.alert, x.replica) in got for x in expected) else None

        wait_for(all_arrived, max(deadline_s(rules, x) for x in expected), 0.5)
        # The error-rate fault as each layer saw it (the availability SLI reads the engine's counters).
        five_xx = _query(state, 'sum(haproxy_server_http_responses_total{proxy="engines",server="s0",code="5xx"})')
        engine_errors = _query(state, 'sum(forge_requests_total{replica="s0",outcome="error"})')
        yield LiveRun(state, rules, expected, alert_events(state.receiver_file), traffic, five_xx, engine_errors)
    finally:
        traffic.stop.set()
        stack.down(plan.state_dir)    # open requests fail at once, so the client threads end
        traffic.join(5)


def _check(live: LiveRun, alert: str) -> None:
    exp = next(x for x in live.expected if x.alert == alert)
    rule = live.rules[alert]
    event = live.first(alert, exp.replica)
    assert event is not None, (f"no firing {alert} for {exp.replica} within {live.deadline_s(exp):.0f} s; got "
                               f"{sorted({(e['alertname'], e['labels'].get('replica')) for e in live.events})}")
    took = event["received_unix"] - exp.started_unix
    print(f"\n{alert} ({exp.replica}): at the receiver {took:.1f} s after the fault "
          f"(window {rule.window_s} s, for {rule.for_s} s; deadline {live.deadline_s(exp):.0f} s)")
    labels = event["labels"]
    assert labels["severity"] == exp.severity and labels.get("replica") == exp.replica
    # Not before the rule allows: `for:` (and the window a "held all along" condition needs, less two scrapes).
    earliest = rule.for_s + (rule.window_s - 2 * SCRAPE_S if exp.windowed else 0)
    assert earliest <= took <= live.deadline_s(exp), (took, earliest, live.deadline_s(exp))
    annotations = rule.rule["annotations"]
    assert annotations["runbook_url"].endswith(f"/{alert}.md")


def _engine_labels(live: LiveRun, alert: str, replica: str) -> None:
    labels = live.first(alert, replica)["labels"]
    assert {k: labels.get(k) for k in ("engine", "model", "replica")} == {"engine": "vllm", "model": MODEL,
                                                                          "replica": replica}


def test_engine_hung_by_the_simulator_fires_engine_hung(live):
    _check(live, "ForgeEngineHung")
    _engine_labels(live, "ForgeEngineHung", "s0")


def test_critical_xid_fires_xid_critical_with_the_gpu_labels(live):
    _check(live, "ForgeGPUXidCritical")
    labels = live.first("ForgeGPUXidCritical", "s0")["labels"]
    assert labels["job"] == "simulated-gpus" and labels["gpu"] and labels["Hostname"] and labels["modelName"]


def test_other_xid_fires_xid_error_not_critical(live):
    _check(live, "ForgeGPUXidError")
    assert live.first("ForgeGPUXidCritical", "s1") is None


def test_prompts_filling_the_kv_cache_fire_kv_near_full(live):
    _check(live, "ForgeKVCacheNearFull")
    _engine_labels(live, "ForgeKVCacheNearFull", "s3")


def test_requests_evicting_each_other_fire_preemption_storm(live):
    _check(live, "ForgePreemptionStorm")
    _engine_labels(live, "ForgePreemptionStorm", "s1")


def test_more_clients_than_the_batch_holds_fire_queue_build_up(live):
    _check(live, "ForgeQueueBuildUp")
    _engine_labels(live, "ForgeQueueBuildUp", "s1")


def test_the_healthy_replica_raises_none_of_them(live):
    assert live.traffic.outcomes.get("200", 0) > 0, live.traffic.outcomes
    served = _query(live.state, 'sum(increase(forge_requests_total{replica="s2",outcome="success"}[1m]))')
    print(f"\ns2 served {served:.0f} requests in the last minute; client outcomes {live.traffic.outcomes}")
    assert served > 0, "the healthy replica took no traffic: nothing was proven about it"
    assert not [e for e in live.events if e["labels"].get("replica") == "s2"], live.events


def test_engine_errors_burn_the_availability_budget_and_page(live):
    """s0's engine fails every request it is given (error_rate 1 at the engine layer: finished_reason="error", as vLLM
    counts an engine-side failure). forge:error_ratio, over every replica of the model, passes 14.4x the 1 %
    budget on both of the page pair's (shortened) windows: the page reaches the receiver, labelled by model."""
    print(f"\nerror_rate 1 on s0: HAProxy counted {live.error_rate_5xx:.0f} 5xx, the engine counters "
          f"{live.error_rate_engine_errors:.0f} errors")
    assert live.error_rate_5xx > 0 and live.error_rate_engine_errors > 0
    _check(live, "ForgeAvailabilitySLOFastBurn")
    labels = live.first("ForgeAvailabilitySLOFastBurn", None)["labels"]
    assert (labels["model"], labels["engine"], labels["slo"]) == (MODEL, "vllm", "availability")
