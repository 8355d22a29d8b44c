"""Spot economics net of interruptions, and the monthly cost delta each capacity/cost recommendation carries."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
import yaml

from forge.loader import load
from forge.readiness.assess import assess_file
from forge.readiness.capacity import HOURS_PER_MONTH, estimate, monthly_cost, what_if
from forge.schema import Deployment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "readiness" / "examples"
AS_OF = dt.date(2026, 11, 23)


def _raw(name: str) -> dict:
    return copy.deepcopy(load(EXAMPLES / name).raw)


def _finding(tmp_path: Path, raw: dict, check: str):
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return next(f for f in assess_file(path, AS_OF).findings if f.check == check)


# ---------------------------------------------------------------- spot
def test_spot_costs_less_than_on_demand_but_more_than_its_list_price():
    spot = estimate(load(EXAMPLES / "spot-fleet-8b.yaml").deployment).spot
    assert spot.spot_list_cost_per_hour < spot.spot_effective_cost_per_hour < spot.on_demand_cost_per_hour
    # The extra spare is one replica at the spot price; re-warms and redone work come on top of it.
    assert spot.spot_effective_cost_per_hour - spot.spot_list_cost_per_hour > 1.51
    assert spot.net_savings_fraction == pytest.approx(1 - spot.spot_effective_cost_per_hour / spot.on_demand_cost_per_hour)
    assert spot.spot_effective_cost_per_million_output_tokens < spot.on_demand_cost_per_million_output_tokens


def test_a_drain_agent_with_a_long_window_loses_fewer_requests():
    raw = _raw("spot-fleet-8b.yaml")
    no_drain = estimate(Deployment.model_validate(raw)).spot
    assert no_drain.drain_failure_probability == 1.0 and no_drain.lost_requests_per_day > 0
    raw["reliability"]["spot_drain"] = {"enabled": True, "notice_source": "aws"}
    raw["reliability"]["termination_grace_period_seconds"] = 120
    raw["engine"]["args"]["shutdown_timeout"] = 120
    drained = estimate(Deployment.model_validate(raw)).spot
    assert drained.drain_window_seconds == 120
    assert drained.drain_failure_probability < 0.05 and drained.lost_requests_per_day < no_drain.lost_requests_per_day


def test_interruptions_that_cancel_the_savings_fail_cost_007(tmp_path):
    raw = _raw("spot-fleet-8b.yaml")
    # A spot price 95 % of on-demand: the extra spare alone eats the discount.
    raw["hardware"]["price_per_gpu_hour"] = 0.95 * 3.78
    raw["hardware"]["capacity"] = "spot"
    f = _finding(tmp_path, raw, "COST-007")
    assert f.status == "fail" and "interruptions cancel the spot savings" in f.message
    assert f.evidence["net_savings_fraction"] < 0.10 and f.evidence["cost_delta_usd_month"] <= 0


def test_prod_spot_floor_warns_with_the_figures(tmp_path):
    f = _finding(tmp_path, _raw("spot-fleet-8b.yaml"), "COST-007")
    assert f.status == "warn" and "net savings" in f.message and "on-demand floor" in f.message
    assert f.evidence["spot_effective_usd_month"] < f.evidence["on_demand_usd_month"]
    assert f.evidence["cost_delta_usd_month"] > 0  # an on-demand floor costs more than spot-only


# ---------------------------------------------------------------- cost deltas per recommendation
def test_what_if_reruns_the_model():
    d = load(EXAMPLES / "chat-70b-fp8-h100.yaml").deployment
    bf16_kv = what_if(d, None, {"engine.args.kv_cache_dtype": "auto"})
    assert bf16_kv.kv_bytes_per_token == 2 * estimate(d).kv_bytes_per_token
    assert monthly_cost(bf16_kv) > monthly_cost(estimate(d))


def test_fp8_kv_finding_says_what_it_saves(tmp_path):
    f = _finding(tmp_path, _raw("internal-8b-l40s.yaml"), "COST-006")
    usd = f.evidence["cost_delta_usd_month"]
    assert usd < 0 and f"saves ${-usd:,.0f}/month" in f.message
    raw = _raw("internal-8b-l40s.yaml")
    before = monthly_cost(estimate(Deployment.model_validate(raw)))
    raw["engine"]["args"]["kv_cache_dtype"] = "fp8"
    assert monthly_cost(estimate(Deployment.model_validate(raw))) - before == pytest.approx(usd, abs=1)


def test_oversized_floor_finding_prices_the_smaller_floor(tmp_path):
    raw = _raw("chat-70b-fp8-h100.yaml")
    raw["hardware"]["replicas"] = {"min": 12, "max": 40}
    f = _finding(tmp_path, raw, "COST-002")
    assert f.status in ("warn", "fail") and f.evidence["cost_delta_usd_month"] < 0
    assert "saves $" in f.message


def test_prefix_caching_off_prices_turning_it_on(tmp_path):
    raw = _raw("chat-70b-fp8-h100.yaml")
    raw["engine"]["args"]["enable_prefix_caching"] = False
    raw["traffic"]["prefix_cache_hit_rate"] = 0.6
    f = _finding(tmp_path, raw, "COST-003")
    assert f.status == "fail" and f.evidence["cost_delta_usd_month"] < 0 and "saves $" in f.message


def test_model_that_does_not_fit_prices_the_wider_replica(tmp_path):
    raw = _raw("chat-70b-fp8-h100.yaml")
    raw["engine"]["args"]["tensor_parallel_size"] = 1
    raw["hardware"]["gpus_per_replica"] = 1
    raw["model"]["weights"].update(dtype="bf16", quantization="none")
    f = _finding(tmp_path, raw, "PERF-001")
    assert f.status == "fail" and "tensor_parallel_size 2 fits and costs $" in f.message
    assert f.evidence["cost_usd_month_with_fix"] > 0


def test_three_x_finding_prices_the_growth(tmp_path):
    raw = _raw("chat-70b-fp8-h100.yaml")
    raw["hardware"]["replicas"] = {"min": 5, "max": 6}
    f = _finding(tmp_path, raw, "PERF-009")
    plan = estimate(Deployment.model_validate(raw))
    expected = round((plan.growth[1].cost_per_hour - plan.growth[0].cost_per_hour) * HOURS_PER_MONTH)
    assert f.evidence["cost_delta_usd_month"] == expected and f"${expected:,}/month more" in f.message
