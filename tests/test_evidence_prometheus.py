"""Live Prometheus evidence for `forge readiness assess --prometheus URL` (issue 10, first evidence source).

Fast tests (no stack): parsing of Prometheus API answers recorded from the reference stack (tests/fixtures/evidence/
targets.json, rules.json), the checks' verdicts on evidence where a claim and the live data disagree, a real HTTP
server that answers only part of the API (partial evidence, a reason per item), and bad URLs.

Stack tests (marked `stack`): one reference stack of two simulator replicas with Prometheus (Forge's rules) and the
Forge exporter for the module. A healthy short load → every live check passes with measured numbers; the same
deploy file, whose YAML alone grades `ready`, with the simulator made slow under load → `forge readiness assess
FILE --prometheus URL` says `not_ready` because PERF-011 measured the TTFT p95 over the SLO; dead and non-Prometheus
URLs → exit 2 with one line; an XID on a simulated GPU → OBS-015 fails.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from helpers import need_stack_binaries, wait_for
from typer.testing import CliRunner

from forge.alerts.generate import build_rules, render, settings_from_deployment
from forge.errors import InputError
from forge.loader import load
from forge.readiness.assess import CheckContext, assess_file
from forge.readiness.evidence_prometheus import (
    Prometheus, PrometheusError, _squash, check_url, collect, compare_rules, parse_rules, parse_targets, safe_url,
)
from forge.readiness.registry import all_checks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "evidence"
CLAIMS_FINE = FIXTURES / "claims-fine.yaml"
ROOT = Path(__file__).resolve().parent.parent
CHAT_70B = ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml"
REFERENCE = ROOT / "reference-stack" / "deploy.yaml"   # what the recorded rules.json was generated for
AS_OF = "2026-11-01"
LIVE_CHECKS = ("OBS-012", "OBS-013", "OBS-014", "OBS-015", "PERF-011", "PERF-012", "REL-011")
MODEL = 'model="forge-tiny-llama"'


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _forge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from forge.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------- parsing (fast)

def test_targets_parse_from_recorded_answer():
    data = json.loads((FIXTURES / "targets.json").read_text())["data"]
    newest = max(t["lastScrape"] for t in data["activeTargets"])
    now = dt.datetime.fromisoformat(newest[:19] + "+00:00").timestamp() + 2
    rows = parse_targets(data, now)
    assert {r["job"] for r in rows} == {"alertmanager", "engines", "forge-exporter", "haproxy", "prometheus",
                                        "simulated-gpus"}
    assert all(r["health"] == "up" and not r["stale"] and 0 < r["last_scrape_age_s"] < 10 for r in rows), rows
    # An hour later every target is stale: its last scrape is many 5 s intervals old.
    assert all(r["stale"] for r in parse_targets(data, now + 3600))


def test_rules_loaded_on_the_stack_are_what_forge_generates_for_the_reference_deployment():
    loaded = parse_rules(json.loads((FIXTURES / "rules.json").read_text())["data"])
    expected = build_rules(settings_from_deployment(load(REFERENCE).deployment))
    found = compare_rules(loaded, expected)
    assert found["alerts_missing"] == [] and found["records_missing"] == [] and found["unhealthy"] == []
    assert found["alerts_expected"] == len(expected.alerts()) >= 20
    # Prometheus prints `1e6` back as `1e+06` and re-spaces everything: still the same rule.
    assert found["differs_from_generated"] == []
    assert _squash("rate(x[5m]) / 1e6 > 0.2") == _squash("rate(x[5m])  /  1e+06 >0.2")
    assert _squash('x{le="0.5"} > 14.4') != _squash('x{le="1"} > 14.4')


def test_rules_generated_for_other_slos_or_missing_are_told_apart():
    loaded = parse_rules(json.loads((FIXTURES / "rules.json").read_text())["data"])
    chat = build_rules(settings_from_deployment(load(CHAT_70B).deployment))
    other = compare_rules(loaded, chat)
    # Same alert names, but the SLI rules read another bucket (TTFT SLO 1.5 s there, 0.5 s on the stack).
    assert other["alerts_missing"] == []
    assert "model:forge_ttft_slo_miss:ratio_rate5m" in other["differs_from_generated"]
    assert other["groups_missing"] == [g.name for g in chat.groups]
    without_engine_alerts = [r for r in loaded if r["group"] != "forge-reference-engine-alerts"]
    reference = build_rules(settings_from_deployment(load(REFERENCE).deployment))
    assert {"ForgeEngineDown", "ForgeEngineHung"} <= set(
        compare_rules(without_engine_alerts, reference)["alerts_missing"])


def test_urls_with_credentials_are_never_shown_and_bad_urls_are_one_line_errors():
    assert safe_url("https://user:pa55@prom.example.com:9090/prometheus") == "https://***@prom.example.com:9090/prometheus"
    assert "tok" not in safe_url("http://127.0.0.1:9090/?token=tok")
    assert "pa55" not in safe_url("http://u:pa55@host:99999/")
    for bad, words in (("ftp://host", "not an http(s) URL"), ("127.0.0.1:9090", "not an http(s) URL"),
                       ("http://h:99999", "bad port"), ("http://h:9090/?q=1", "query string")):
        with pytest.raises(InputError) as err:
            check_url(bad, "--prometheus")
        assert len(err.value.messages) == 1 and words in err.value.messages[0], err.value.messages
        assert "e.g. http://127.0.0.1:9090" in err.value.messages[0]


# ----------------------------------------------------------------------------------------------- checks (fast)

def _claims_fine_rules():
    return build_rules(settings_from_deployment(load(CLAIMS_FINE).deployment))


def _loaded_as_generated() -> list[dict]:
    """parse_rules() rows of a Prometheus that loaded exactly the rule file Forge generates for claims-fine.yaml."""
    return [{"group": g.name, "file": "forge-rules.yaml", "name": getattr(r, "alert", None) or r.record,
             "type": "alerting" if hasattr(r, "alert") else "recording", "health": "ok", "last_error": "",
             "query": r.expr} for g in _claims_fine_rules().groups for r in g.rules]


def _healthy_evidence() -> dict:
    """What collect() returned from the reference stack after a short healthy load (numbers as measured there)."""
    return {
        "url": "http://127.0.0.1:39013", "window": "1h", "selector": MODEL, "evaluated_at": 1795441298.9,
        "prometheus_version": "2.42.0+ds",
        "targets": {"targets": [
            {"job": "forge-exporter", "instance": "127.0.0.1:35613", "health": "up", "last_error": "",
             "last_scrape_age_s": 2.1, "stale": False, "serves_deployment": True},
            {"job": "engines", "instance": "127.0.0.1:41943", "health": "up", "last_error": "",
             "last_scrape_age_s": 3.5, "stale": False, "serves_deployment": False}],
            "replicas_down": [], "serving": 1, "selector": MODEL},
        "rules": compare_rules(_loaded_as_generated(), _claims_fine_rules()),
        "signals": {"selector": MODEL, "needed": [
            {"signal": "forge_ttft_seconds", "why": "TTFT SLO and OBS-002", "declared": True, "state": "present",
             "series": 2}], "present": ["forge_ttft_seconds"], "native_only": [], "missing": [], "unknown": []},
        "latency": {"ttft": {"series": "forge_ttft_seconds", "quantile": 0.95, "observations": 21, "p95_seconds": 0.04},
                    "itl": {"series": "forge_itl_seconds", "quantile": 0.95, "observations": 308,
                            "p95_seconds": 0.009532}},
        "availability": {"requests": 21, "errors": 0, "signal": "forge_requests_total", "success_ratio": 1.0},
        "prefix_cache": {"signal": "forge:prefix_cache_hit_ratio", "value": 0.6, "series": 1},
        "spec_decode": {"signal": "forge:spec_acceptance_rate", "value": None, "series": 0},
        "gpu": {"gpu_series": 2, "xid": [], "ecc_series": 0, "ecc_uncorrectable": [], "rows_remapped": [],
                "signals": ["DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                            "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"]},
    }


def _run_checks(evidence: dict | None, path: Path = CLAIMS_FINE) -> dict:
    ctx = CheckContext(load(path), dt.date.fromisoformat(AS_OF))
    ctx.__dict__["prometheus_evidence"] = evidence  # what the cached property would have read from Prometheus
    return {cid: all_checks()[cid].func(ctx) for cid in LIVE_CHECKS}


def test_without_a_url_the_live_checks_do_not_apply_and_verdicts_stay():
    outcomes = _run_checks(None)
    assert {o.status for o in outcomes.values()} == {"not_applicable"}
    assessment = assess_file(CLAIMS_FINE, dt.date.fromisoformat(AS_OF))
    assert assessment.verdict == "ready", assessment.verdict_reasons
    assert {f.status for f in assessment.findings if f.check in LIVE_CHECKS} == {"not_applicable"}


def test_healthy_evidence_passes_every_live_check_with_its_numbers():
    outcomes = _run_checks(_healthy_evidence())
    assert {cid: o.status for cid, o in outcomes.items()} == {cid: "pass" for cid in LIVE_CHECKS}
    assert all(o.basis == "evidence" for o in outcomes.values())
    assert outcomes["PERF-011"].evidence["ttft_p95_seconds_measured"] == 0.04
    assert outcomes["PERF-012"].evidence["prefix_cache_hit_ratio_measured"] == 0.6


def test_claims_contradicted_by_evidence_are_said_so():
    ev = _healthy_evidence()
    # The YAML claims ForgeEngineHung and a progress watchdog; Prometheus lost the engine-alert group.
    ev["rules"] = compare_rules([r for r in _loaded_as_generated() if not r["group"].endswith("-engine-alerts")],
                                _claims_fine_rules())
    ev["signals"]["needed"][0]["state"] = "missing"
    ev["signals"]["missing"], ev["signals"]["present"] = ["forge_ttft_seconds"], []
    ev["prefix_cache"]["value"] = 0.05
    ev["availability"].update(requests=1000, errors=40, success_ratio=0.96)
    ev["gpu"]["xid"] = [{"gpu": "0", "host": "node-a", "xid": 79}]
    ev["latency"]["ttft"]["p95_seconds"] = 2.0
    out = _run_checks(ev)
    assert out["PERF-011"].status == "fail" and "TTFT p95 2 s > SLO 1 s" in out["PERF-011"].message
    assert "ITL" not in out["PERF-011"].message  # ITL met its SLO: not a reason
    assert out["OBS-013"].status == "fail"
    assert "deploy.yaml claims alert(s) ForgeEngineDown, ForgeEngineHung" in out["OBS-013"].message
    assert "claims a progress watchdog (REL-004), but Prometheus has no hung-engine alert" in out["OBS-013"].message
    assert out["OBS-014"].status == "fail" and "deploy.yaml claims forge_ttft_seconds collected" in out["OBS-014"].message
    assert out["PERF-012"].status == "fail"
    assert "claims prefix-cache hit ratio 30%, but the live prefix-cache hit ratio over the last 1h is 5.0%" \
        in out["PERF-012"].message
    assert out["REL-011"].status == "fail" and "96.0000% of ≈1000" in out["REL-011"].message
    assert out["OBS-015"].status == "fail" and "XID error(s) 79 on GPU 0 node-a" in out["OBS-015"].message
    assert all(o.basis == "evidence" for o in out.values())


def test_a_gpu_deployment_without_gpu_series_contradicts_its_gpu_metrics_claim():
    ev = _healthy_evidence()
    ev["gpu"].update(gpu_series=0)
    out = _run_checks(ev, CHAT_70B)
    assert out["OBS-015"].status == "fail"
    assert out["OBS-015"].message.startswith("deploy.yaml claims GPU metrics from dcgm-exporter (OBS-006), but")
    # The example claims an alert name Forge does not generate; the live rules show it is not loaded.
    assert "ForgeTTFTSLOBurnRateHigh" in out["OBS-013"].message and out["OBS-013"].status == "fail"


class _PartialPrometheus(BaseHTTPRequestHandler):
    """A real HTTP server answering like a Prometheus whose rules endpoint is broken and whose queries time out,
    except `time()` and the targets (recorded from the stack)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        if url.path == "/api/v1/query" and query == "time()":
            self._json(200, {"status": "success", "data": {"resultType": "scalar", "result": [1795441300.0, "1795441300"]}})
        elif url.path == "/api/v1/targets":
            self._json(200, json.loads((FIXTURES / "targets.json").read_text()))
        elif url.path == "/api/v1/rules":
            self._send(503, b"<html>rule manager not ready</html>", "text/html")
        else:
            self._json(503, {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"})

    def _json(self, code: int, body: dict) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet test output
        pass


def test_a_partially_answering_prometheus_gives_partial_evidence_with_the_reason_per_item():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PartialPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ev = collect(url, load(CLAIMS_FINE).deployment)
    finally:
        server.shutdown()
        server.server_close()
    assert "HTTP 503 text/html" in ev["rules"]["error"]
    assert "query timed out" in ev["latency"]["ttft"]["error"]
    assert "query timed out" in ev["availability"]["error"]
    # The targets answer parsed, but which of them serve the deployment needs a query that timed out.
    assert "query timed out" in ev["targets"]["error"]
    out = _run_checks(ev)
    assert out["OBS-013"].status == "warn" and "could not read the loaded rules" in out["OBS-013"].message
    assert out["OBS-013"].basis == "evidence"
    assert out["PERF-011"].status == "warn" and "query failed" in out["PERF-011"].message
    assert out["REL-011"].status == "warn"


class _EmptyPrometheus(_PartialPrometheus):
    """A real HTTP server answering like a healthy Prometheus that has no data at all."""

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        if url.path == "/api/v1/query" and query == "time()":
            self._json(200, {"status": "success", "data": {"resultType": "scalar", "result": [1795441300.0, "1795441300"]}})
        elif url.path == "/api/v1/query":
            self._json(200, {"status": "success", "data": {"resultType": "vector", "result": []}})
        elif url.path == "/api/v1/targets":
            self._json(200, {"status": "success", "data": {"activeTargets": [], "droppedTargets": []}})
        elif url.path == "/api/v1/rules":
            self._json(200, {"status": "success", "data": {"groups": []}})
        else:
            self._json(404, {"status": "error", "errorType": "not_found", "error": "no such endpoint"})


def test_an_empty_prometheus_fails_the_claims_and_knows_what_the_engine_never_exports():
    trtllm = ROOT / "readiness" / "examples" / "trtllm-triton-8b.yaml"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ev = collect(f"http://127.0.0.1:{server.server_address[1]}", load(trtllm).deployment)
    finally:
        server.shutdown()
        server.server_close()
    # TensorRT-LLM exports no inter-token latency (catalog `unavailable`): not something the deployment can fix.
    assert "forge_itl_seconds" in ev["signals"]["engine_lacks"]
    assert "forge_ttft_seconds" in ev["signals"]["missing"]
    assert ev["prometheus_version"] is None  # buildinfo answered 404: a missing version is no reason to stop
    out = _run_checks(ev, trtllm)
    assert out["OBS-012"].status == "fail" and "no scrape target" in out["OBS-012"].message
    assert out["OBS-013"].status == "fail"
    n = len(build_rules(settings_from_deployment(load(trtllm).deployment)).alerts())
    assert f"{n} of {n} alert(s) Forge generates for this deploy.yaml are not loaded" in out["OBS-013"].message
    assert out["OBS-014"].status == "fail" and "forge_itl_seconds" not in out["OBS-014"].message
    assert out["PERF-011"].status == "warn"


def test_a_slow_prometheus_is_not_waited_for_past_the_budget():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PartialPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        prom = Prometheus(f"http://127.0.0.1:{server.server_address[1]}", "--prometheus")
        assert prom.probe() == 1795441300.0
        prom.deadline = time.monotonic() - 1  # as if earlier answers had used up the budget
        with pytest.raises(PrometheusError, match="not asked"):
            prom.get("/api/v1/targets")
        prom.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_dead_url_in_the_deploy_file_names_the_file_line_and_key(tmp_path):
    data = yaml.safe_load(CLAIMS_FINE.read_text())
    data["evidence"] = {"prometheus_url": _closed_port_url()}
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError) as err:
        assess_file(path, dt.date.fromisoformat(AS_OF))
    (message,) = err.value.messages
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "prometheus_url" in text)
    assert message.startswith(f"{path}:{line}:"), message
    assert "evidence.prometheus_url" in message and "connection refused" in message


# ----------------------------------------------------------------------------------------------- the live stack

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    need_stack_binaries()
    from forge.reference_stack import stack

    tmp = tmp_path_factory.mktemp("evidence")
    rules = tmp / "claims-fine-rules.yaml"
    rules.write_text(render(_claims_fine_rules(), source="tests/test_evidence_prometheus.py"))
    # 2 s scrapes (exporter and Prometheus) so the evidence of a load is in Prometheus within seconds.
    plan = stack.StackPlan(state_dir=tmp / "state", engine="sim", replicas=2, ports=stack.Ports.free(2),
                           scrape_interval_s=2, evaluation_interval_s=2, rule_files=[rules])
    try:
        state = stack.up(plan)
        # Counters sampled at 0 before any load: increase() over the window then counts every request.
        assert wait_for(lambda: _query(state.prometheus_url, f"count(forge_requests_total{{{MODEL}}})"), 30, 0.5), \
            "the exporter's series never reached Prometheus"
        yield {"state": state, "plan": plan, "tmp": tmp, "sent": 0}
    finally:
        stack.down(plan.state_dir)  # always: also after a failed test or a failed start


def _query(prom: str, promql: str) -> list[dict]:
    return httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=5).json()["data"]["result"]


def _load(live, name: str, *args: str) -> list[dict]:
    """Bounded load through the gateway (forge load run), then wait until Prometheus has every finished request."""
    from forge.load.cli import app as load_app

    out = live["tmp"] / f"{name}.jsonl"
    result = CliRunner().invoke(load_app, ["run", "--target", live["state"].gateway_url, "--out", str(out),
                                           "--no-progress", *args])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["outcome"] == "ok" for r in rows), [r["outcome"] for r in rows]
    live["sent"] += len(rows)
    prom = live["state"].prometheus_url

    def seen_all() -> bool:
        answer = _query(prom, f"sum(forge_requests_total{{{MODEL}}})")
        return bool(answer) and float(answer[0]["value"][1]) >= live["sent"]

    assert wait_for(seen_all, 30, 0.5), "Prometheus never saw every finished request"
    return rows


def _fault(live, body: dict) -> None:
    for engine in live["state"].engines():
        httpx.post(f"{engine.url}/_forge/faults", json=body, timeout=5).raise_for_status()


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_healthy_stack_passes_every_live_check_with_measured_numbers(live):
    rows = _load(live, "healthy", "--rate", "4", "--duration", "4", "--max-requests", "16", "--prompt-tokens",
                 "fixed:96", "--output-tokens", "fixed:16", "--shared-prefix-tokens", "64", "--prefix-groups", "2")
    started = time.monotonic()
    assessment = assess_file(CLAIMS_FINE, dt.date.fromisoformat(AS_OF),
                             {"prometheus_url": (live["state"].prometheus_url,)})
    took = time.monotonic() - started
    live_findings = {f.check: f for f in assessment.findings if f.check in LIVE_CHECKS}
    for f in live_findings.values():
        print(f"\n{f.check} {f.status}: {f.message}")
    print(f"assess with live evidence: {took:.2f} s")
    assert {c: f.status for c, f in live_findings.items()} == {c: "pass" for c in LIVE_CHECKS}
    assert all(f.basis == "evidence" for f in live_findings.values())
    perf = live_findings["PERF-011"].evidence
    assert 0 < perf["ttft_p95_seconds_measured"] <= 1.0 and perf["ttft_observations"] >= 0.8 * len(rows)
    assert 0 < perf["itl_p95_seconds_measured"] <= 0.1
    rel = live_findings["REL-011"].evidence
    assert rel["success_ratio"] == 1.0 and rel["errors"] == 0 and rel["requests"] >= 0.8 * len(rows)
    # 64 of 96 prompt tokens shared by the requests of each of two groups: well over the claimed 30%.
    assert live_findings["PERF-012"].evidence["prefix_cache_hit_ratio_measured"] > 0.3
    assert live_findings["OBS-013"].evidence["alerts_missing"] == []
    assert assessment.verdict == "ready", assessment.verdict_reasons

    # Another deployment graded against this Prometheus: none of its series are there, and the finding says which
    # model the Prometheus does have; its rules were generated for other SLOs.
    other = _run_checks(collect(live["state"].prometheus_url, load(CHAT_70B).deployment), CHAT_70B)
    assert other["OBS-014"].status == "fail", other["OBS-014"].message
    assert 'no live series for model="llama-3.1-70b-instruct-fp8"' in other["OBS-014"].message
    assert "engine series for model(s) forge-tiny-llama" in other["OBS-014"].message
    assert other["OBS-012"].status == "fail" and "no scrape target" in other["OBS-012"].message
    assert other["PERF-011"].status == "warn"


@pytest.mark.stack
@pytest.mark.timeout(120)
def test_claims_look_fine_but_a_slow_engine_under_load_is_not_ready(live):
    # The YAML alone grades ready (its claims look fine).
    plain = assess_file(CLAIMS_FINE, dt.date.fromisoformat(AS_OF))
    assert plain.verdict == "ready", plain.verdict_reasons
    # 100× slower steps: a 64-token prefill alone takes ~1.4 s (simulator defaults: 2.5 ms + 0.18 ms/token), so
    # every slowed request misses the 1 s TTFT SLO by itself, queueing or not.
    _fault(live, {"mode": "slow", "factor": 100})
    try:
        _load(live, "slow", "--rate", "3", "--duration", "3", "--max-requests", "9", "--prompt-tokens", "fixed:64",
              "--output-tokens", "fixed:4")
    finally:
        _fault(live, {"mode": "none"})
    graded = _forge("readiness", "assess", str(CLAIMS_FINE), "--as-of", AS_OF, "--format", "json",
                    "--prometheus", live["state"].prometheus_url)
    assert graded.returncode == 1, graded.stderr
    report = json.loads(graded.stdout)
    assert report["verdict"] == "not_ready"
    assert report["verdict_reasons"] == ["critical finding(s) open: PERF-011"], report["verdict_reasons"]
    perf = next(f for f in report["findings"] if f["check"] == "PERF-011")
    print(f"\nPERF-011 {perf['status']}: {perf['message']}")
    assert perf["status"] == "fail" and perf["basis"] == "evidence"
    assert "TTFT p95" in perf["message"] and "> SLO 1 s" in perf["message"]
    assert perf["evidence"]["ttft_p95_seconds_measured"] > 1.0
    # The capacity model's prediction met the SLO: the finding says evidence wins over it.
    assert "the capacity model predicts" in perf["message"] and "evidence wins" in perf["message"]
    others = {f["check"]: f["status"] for f in report["findings"] if f["check"] in LIVE_CHECKS}
    assert others["OBS-012"] == others["OBS-013"] == others["OBS-014"] == others["REL-011"] == "pass", others


@pytest.mark.stack
@pytest.mark.timeout(60)
def test_dead_and_non_prometheus_urls_exit_2_with_one_line(live):
    plan = live["plan"]
    for url, reason in ((_closed_port_url(), "connection refused"),
                        (f"http://127.0.0.1:{plan.ports.haproxy_stats}", "not Prometheus API JSON"),
                        (live["state"].engines()[0].url, "JSON without Prometheus' status field")):
        result = _forge("readiness", "assess", str(CLAIMS_FINE), "--prometheus", url, "--format", "json")
        assert result.returncode == 2, (url, result.stdout[-300:], result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert url in lines[0] and reason in lines[0] and "e.g. http://127.0.0.1:9090" in lines[0], lines[0]
        assert result.stdout == ""


@pytest.mark.stack
@pytest.mark.timeout(60)
def test_an_xid_on_a_gpu_fails_gpu_health(live):
    # Last in the module: the XID stays in the window once Prometheus has scraped it.
    engine = live["state"].engines()[0]
    httpx.post(f"{engine.url}/_forge/faults", json={"mode": "xid", "xid": 79}, timeout=5).raise_for_status()
    prom = live["state"].prometheus_url

    def scraped() -> bool:
        answer = _query(prom, "max(DCGM_FI_DEV_XID_ERRORS)")
        return bool(answer) and float(answer[0]["value"][1]) == 79

    assert wait_for(scraped, 20, 0.5), "Prometheus never scraped the XID"
    ev = collect(prom, load(CLAIMS_FINE).deployment, window="10m")
    out = _run_checks(ev)
    assert out["OBS-015"].status == "fail" and "XID error(s) 79" in out["OBS-015"].message, out["OBS-015"].message
