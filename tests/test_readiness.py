"""Checks, scoring, waivers and the verdict, on real deploy files mutated one failure mode at a time."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from forge.readiness.assess import assess_file
from forge.readiness.registry import all_checks
from forge.readiness.result import DIMENSIONS, GATING_DIMENSIONS, DimensionScore, Finding
from forge.readiness.scoring import score_dimension, verdict
from forge.schema import Deployment

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml"
AS_OF = dt.date(2026, 11, 23)


def base() -> dict:
    return yaml.safe_load(GOOD.read_text())


def assess_dict(tmp_path: Path, data: dict, name: str = "deploy.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return assess_file(path, AS_OF)


def status_of(assessment, check_id: str) -> str:
    return next(f.status for f in assessment.findings if f.check == check_id)


def finding(assessment, check_id: str) -> Finding:
    return next(f for f in assessment.findings if f.check == check_id)


# ------------------------------------------------------------------ the registry
def test_registry_has_enough_checks_in_every_dimension():
    checks = all_checks()
    assert len(checks) >= 40
    per_dimension = Counter(c.dimension for c in checks.values())
    assert set(per_dimension) == set(DIMENSIONS)
    assert min(per_dimension.values()) >= 3


def test_every_check_explains_itself_and_points_into_the_schema():
    fields = set(Deployment.model_fields)
    for c in all_checks().values():
        assert len(c.rationale) > 40, c.id
        assert len(c.remediation) > 20, c.id
        assert c.severity in ("critical", "high", "medium", "low")
        if c.path:
            assert c.path.split(".")[0] in fields, (c.id, c.path)


def test_the_good_example_passes_the_assessment():
    a = assess_file(GOOD, AS_OF)
    assert a.verdict == "ready", a.verdict_reasons
    assert a.score >= 85
    assert {d.id for d in a.dimensions} == set(DIMENSIONS)
    assert not [f for f in a.findings if f.status == "fail"]


# ------------------------------------------------------------------ one failure mode at a time
def _mutations():
    def spot_no_drain(d):
        d["hardware"]["capacity"] = "spot"

    def drain_longer_than_grace(d):
        d["engine"]["args"]["shutdown_timeout"] = 120
        d["reliability"]["termination_grace_period_seconds"] = 60

    def no_shutdown_timeout(d):
        del d["engine"]["args"]["shutdown_timeout"]

    def health_only_liveness(d):
        d["reliability"]["liveness"] = {"http_path": "/health"}

    def manual_rollback(d):
        d["rollout"]["automated_rollback"] = False

    def slow_rollback(d):
        d["rollout"]["rollback_seconds"] = 900

    def no_latency_signals(d):
        d["observability"]["signals"] = ["kv_cache_usage", "requests_waiting", "preemptions"]

    def spec_without_acceptance(d):
        d["engine"]["args"]["speculative_config"] = {"method": "ngram", "num_speculative_tokens": 3}

    def prefix_caching_off(d):
        d["engine"]["args"]["enable_prefix_caching"] = False

    def quantized_without_eval(d):
        del d["correctness"]["eval"]

    def unsigned_weights(d):
        d["model"]["weights"]["signed"] = False
        d["security"]["weights_verified"] = False

    def no_threat_model(d):
        del d["security"]["threat_model"]

    def alerts_without_runbooks(d):
        d["observability"]["alerts"] = ["ForgeEngineDown", "ForgeEngineHung", "ForgeSLOBurn"]
        d["operations"]["runbooks"] = []

    def no_oncall(d):
        del d["operations"]["oncall_rotation"]

    def no_escalation(d):
        del d["operations"]["escalation_policy"]

    def weights_in_image(d):
        d["model"]["weights"]["delivery"] = "image"

    def no_chargeback(d):
        del d["metadata"]["team"]
        del d["metadata"]["cost_center"]

    def long_context(d):
        d["model"]["max_model_len"] = 1_000_000

    def too_big_for_one_gpu(d):
        d["engine"]["args"]["tensor_parallel_size"] = 1
        d["hardware"]["gpus_per_replica"] = 1
        d["model"]["weights"].update(dtype="bf16", quantization="none")

    def no_engine_metrics(d):
        d["observability"]["engine_metrics"] = False

    def unauthenticated(d):
        d["security"]["authn"] = "none"

    def single_replica(d):
        d["hardware"]["replicas"] = {"min": 1, "max": 4}

    return {
        "REL-001": spot_no_drain, "REL-003": drain_longer_than_grace, "REL-002": no_shutdown_timeout,
        "REL-004": health_only_liveness, "DEP-001": manual_rollback, "DEP-002": slow_rollback,
        "OBS-002": no_latency_signals, "OBS-005": spec_without_acceptance, "COST-003": prefix_caching_off,
        "COR-004": quantized_without_eval, "SEC-002": unsigned_weights, "SEC-001": no_threat_model,
        "OBS-007": alerts_without_runbooks, "OPS-001": no_oncall, "OPS-002": no_escalation,
        "DEP-003": weights_in_image, "COST-001": no_chargeback, "PERF-002": long_context,
        "PERF-001": too_big_for_one_gpu, "OBS-001": no_engine_metrics, "SEC-003": unauthenticated,
        "REL-005": single_replica,
    }


@pytest.mark.parametrize("check_id", sorted(_mutations()))
def test_each_failure_mode_is_caught(tmp_path, check_id):
    data = base()
    assert status_of(assess_file(GOOD, AS_OF), check_id) in ("pass", "not_applicable")
    _mutations()[check_id](data)
    a = assess_dict(tmp_path, data)
    f = finding(a, check_id)
    assert f.status == "fail", (f.message, f.evidence)
    assert f.message and f.remediation
    if f.dimension in GATING_DIMENSIONS or f.severity == "critical":
        assert a.verdict == "not_ready"


def test_finding_points_at_the_yaml_line(tmp_path):
    data = base()
    data["engine"]["args"]["shutdown_timeout"] = 120
    data["reliability"]["termination_grace_period_seconds"] = 60
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    f = finding(assess_file(path, AS_OF), "REL-003")
    line = path.read_text().splitlines()[f.line - 1]
    assert line.strip().startswith("termination_grace_period_seconds:")
    assert f.evidence == {"shutdown_timeout": 120, "termination_grace_period_seconds": 60}


def test_missing_sections_are_findings_not_crashes(tmp_path):
    minimal = {k: base()[k] for k in ("apiVersion", "kind", "metadata", "model", "engine", "hardware")}
    a = assess_dict(tmp_path, minimal)
    assert a.verdict == "not_ready"
    failing_dims = {f.dimension for f in a.findings if f.status == "fail"}
    assert {"security", "operations", "observability", "reliability"} <= failing_dims
    assert status_of(a, "PERF-003") == "fail"  # no SLO


# ------------------------------------------------------------------ waivers
def test_unexpired_waiver_waives_and_expired_waiver_is_a_finding(tmp_path):
    data = base()
    data["security"]["sbom"] = False
    data["waivers"] = [{"check": "SEC-005", "reason": "SBOM with the new image pipeline", "expires": "2027-01-31"}]
    a = assess_dict(tmp_path, data)
    f = finding(a, "SEC-005")
    assert f.status == "waived" and f.waiver == {"reason": "SBOM with the new image pipeline", "expires": "2027-01-31"}
    assert status_of(a, "OPS-006") == "pass"

    data["waivers"][0]["expires"] = "2026-11-01"
    a = assess_dict(tmp_path, data)
    assert finding(a, "SEC-005").status == "warn"
    ops = finding(a, "OPS-006")
    assert ops.status == "fail" and ops.evidence["expired"] == ["SEC-005"]


def test_waiver_does_not_waive_a_passing_check(tmp_path):
    data = base()
    data["waivers"] = [{"check": "REL-004", "reason": "not needed", "expires": "2027-01-31"}]
    assert status_of(assess_dict(tmp_path, data), "REL-004") == "pass"


def test_waiver_for_unknown_check_is_flagged(tmp_path):
    data = base()
    data["waivers"] = [{"check": "REL-999", "reason": "typo", "expires": "2027-01-31"}]
    assert status_of(assess_dict(tmp_path, data), "OPS-006") == "warn"


def test_as_of_changes_recency_checks(tmp_path):
    data = base()
    data["operations"]["last_game_day"] = "2026-01-01"
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(data))
    assert status_of(assess_file(path, dt.date(2026, 2, 1)), "OPS-005") == "pass"
    assert status_of(assess_file(path, AS_OF), "OPS-005") == "warn"


# ------------------------------------------------------------------ scoring and verdict
def _f(dim, sev, status, cid="X"):
    return Finding(cid, dim, sev, status, "t", "m", {}, "r")


def test_dimension_score_formula():
    findings = [_f("cost", "critical", "pass"), _f("cost", "high", "warn"), _f("cost", "medium", "fail"),
                _f("cost", "low", "not_applicable")]
    d = score_dimension("cost", findings)
    # (10 + 2.5 + 0) / (10 + 5 + 3) = 69.4 %
    assert d.score == 69
    assert d.status == "warn"
    assert d.counts == {"pass": 1, "warn": 1, "fail": 1, "not_applicable": 1}


def test_high_failure_fails_its_dimension_whatever_the_score():
    findings = [_f("reliability", "critical", "pass")] * 5 + [_f("reliability", "high", "fail")]
    d = score_dimension("reliability", findings)
    assert d.score > 85 and d.status == "fail"


def _dims(**status):
    return [DimensionScore(d, DIMENSIONS[d], 100 if status.get(d, "pass") == "pass" else 50, status.get(d, "pass"))
            for d in DIMENSIONS]


def test_gating_dimension_fail_is_never_traded_for_cost():
    result, total, reasons = verdict(_dims(observability="fail"), [])
    assert total >= 70 and result == "not_ready"
    assert any("Observability" in r for r in reasons)
    result, total, _ = verdict(_dims(cost="fail"), [])
    assert result == "ready" and total >= 70


def test_open_critical_finding_anywhere_is_not_ready():
    result, _, reasons = verdict(_dims(), [_f("cost", "critical", "fail", "COST-999")])
    assert result == "not_ready" and "COST-999" in reasons[0]


def test_low_total_is_not_ready():
    dims = [DimensionScore(d, DIMENSIONS[d], 60, "warn") for d in DIMENSIONS]
    result, total, reasons = verdict(dims, [])
    assert (result, total) == ("not_ready", 60)


# ------------------------------------------------------------------ secrets
def test_secrets_never_reach_the_report(tmp_path):
    data = base()
    secret = "sk-live-abcdefghijklmnopqrstuvwxyz123456"
    data["metadata"]["labels"]["openai_api_key"] = secret
    data["engine"]["args"]["hf_token_note"] = "Bearer abcdefghijklmnopqrstuvwxyz0123456789"
    a = assess_dict(tmp_path, data)
    f = finding(a, "SEC-007")
    assert f.status == "fail"
    assert "metadata.labels.openai_api_key" in f.evidence["paths"]
    dumped = json.dumps(a.to_dict())
    assert secret not in dumped and "abcdefghijklmnopqrstuvwxyz0123456789" not in dumped


def test_json_shape_matches_the_contract():
    d = assess_file(GOOD, AS_OF).to_dict()
    for key in ("forge_version", "file", "deployment", "verdict", "score", "dimensions", "findings"):
        assert key in d
    assert set(d["dimensions"][0]) >= {"id", "score", "status"}
    assert set(d["findings"][0]) >= {"check", "dimension", "severity", "status", "title", "message", "evidence",
                                     "remediation"}
    assert d["verdict"] in ("ready", "not_ready")



# ------------------------------------------------------------------ evidence beats claims
LOAD_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "load"


def test_load_results_are_read_as_evidence(tmp_path):
    data = base()
    (tmp_path / "bench.json").write_text((LOAD_FIXTURES / "vllm_bench_serve.json").read_text())
    data["evidence"] = {"load_results": ["bench.json"]}
    a = assess_dict(tmp_path, data)
    assert status_of(a, "PERF-008") == "pass" and finding(a, "PERF-008").basis == "evidence"
    perf = finding(a, "PERF-010")
    assert perf.status == "pass" and perf.basis == "evidence"
    assert perf.evidence["vllm_bench_serve:itl_p95_seconds"] == 0.024

    # The same deployment claiming a tighter ITL SLO than the replay achieved: the evidence contradicts it.
    data["slo"]["itl_p95_seconds"] = 0.02
    a = assess_dict(tmp_path, data)
    f = finding(a, "PERF-010")
    assert f.status == "fail" and "ITL p95 0.024s > SLO 0.02s" in f.message


def test_unreadable_load_results_are_a_finding(tmp_path):
    data = base()
    (tmp_path / "junk.json").write_text("not json at all")
    data["evidence"] = {"load_results": ["junk.json", "missing.json"]}
    f = finding(assess_dict(tmp_path, data), "PERF-008")
    assert f.status == "fail" and len(f.evidence["errors"]) == 2


def test_a_missing_section_reads_as_the_same_defaults_as_the_class_called_empty():
    # readiness/checks/_sections.py builds missing sections with model_construct() (no validator build): the same
    # object as calling the class, as long as no validator of the section runs on its defaults.
    from forge.schema import SLO, Correctness, Evidence, Observability, Operations, Reliability, Rollout, Security, \
        Traffic

    for section in (SLO, Correctness, Evidence, Observability, Operations, Reliability, Rollout, Security, Traffic):
        built, constructed = section(), section.model_construct()
        assert constructed == built and repr(constructed) == repr(built), section.__name__
        assert constructed.model_fields_set == built.model_fields_set == set()
