"""The capacity & cost model: exact KV figures, memory fit, the roofline field references, growth and cost."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from forge.errors import InputError
from forge.loader import load
from forge.readiness.capacity import estimate, replica_step_model
from forge.schema import Deployment

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "models"
GiB = 1024**3


def _tiny_cpu(tmp_path: Path, **args) -> Deployment:
    """The reference stack's shape: vLLM CPU backend, a generated tiny Llama's config.json, KV from kv_cache_memory_bytes."""
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text((FIXTURES / "tiny-llama" / "config.json").read_text())
    return Deployment.model_validate({
        "apiVersion": "forge/v1", "kind": "InferenceDeployment", "metadata": {"name": "tiny"},
        "model": {"name": "tiny", "config_path": "model/config.json"},
        "engine": {"name": "vllm", "args": {"kv_cache_memory_bytes": GiB, **args}},
        "hardware": {"gpu": "CPU"},
    })


def _example(name: str) -> dict:
    return copy.deepcopy(load(ROOT / "readiness" / "examples" / name).raw)


def _seventy_b_fp8(gpu: str) -> Deployment:
    """Llama-3.1-70B class in FP8 on 2 GPUs, 2k prompt / 300 output, chunked prefill tuned to 256-token steps."""
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["hardware"]["gpu"] = gpu
    raw["traffic"].update(prompt_tokens={"p50": 2048, "p95": 2048, "max": 2048},
                          output_tokens={"p50": 300, "p95": 300, "max": 300}, prefix_cache_hit_rate=0.0)
    raw["slo"] = {"ttft_p95_seconds": 2.0, "itl_p95_seconds": 0.045}
    raw["engine"]["args"]["max_num_batched_tokens"] = 256
    return Deployment.model_validate(raw)


# ---------------------------------------------------------------- memory and KV cache
def test_tiny_llama_one_gib_gives_the_tokens_vllm_logs(tmp_path):
    est = estimate(_tiny_cpu(tmp_path), tmp_path)
    # 2 · 2 layers · 2 kv heads · 32 head_dim · 2 bytes = 512 B per token; vLLM logs "CPU KV cache size: 2,097,152".
    assert est.kv_bytes_per_token == 512
    assert est.kv_tokens_per_replica == 2_097_152
    assert est.kv_cache_bytes_per_gpu == GiB and est.fits


def test_tiny_llama_other_configurations(tmp_path):
    # Two GiB, 32-token blocks: twice the tokens.
    assert estimate(_tiny_cpu(tmp_path, kv_cache_memory_bytes=2 * GiB, block_size=32), tmp_path) \
        .kv_tokens_per_replica == 4_194_304
    # TP=2 shards the 2 KV heads: 256 B per token per worker, and every worker has its own 1 GiB.
    tp2 = estimate(_tiny_cpu(tmp_path, tensor_parallel_size=2), tmp_path)
    assert tp2.kv_bytes_per_token == 256 and tp2.kv_tokens_per_replica == 4_194_304
    # An FP8 KV cache halves the bytes per token.
    assert estimate(_tiny_cpu(tmp_path, kv_cache_dtype="fp8"), tmp_path).kv_tokens_per_replica == 4_194_304


def test_kv_tokens_round_down_to_whole_blocks(tmp_path):
    # One byte short of 1 GiB loses the whole last block, as vLLM's num_blocks = mem // block: 128 tokens
    # (65,536 B) with the CPU backend's default block size, 16 tokens (8,192 B) with block_size 16.
    short = estimate(_tiny_cpu(tmp_path, kv_cache_memory_bytes=GiB - 1), tmp_path)
    assert short.kv_tokens_per_replica == 2_097_152 - 128
    extra = estimate(_tiny_cpu(tmp_path, kv_cache_memory_bytes=GiB + 65_535), tmp_path)
    assert extra.kv_tokens_per_replica == 2_097_152
    small_blocks = estimate(_tiny_cpu(tmp_path, kv_cache_memory_bytes=GiB - 1, block_size=16), tmp_path)
    assert small_blocks.kv_tokens_per_replica == 2_097_152 - 16


def test_reference_stack_architecture_block_agrees_with_its_config():
    loaded = load(ROOT / "reference-stack" / "deploy.yaml")
    est = estimate(loaded.deployment, loaded.path.parent)
    assert est.kv_tokens_per_replica == 2_097_152


def test_seventy_b_fp8_tp2_weights_and_kv_per_gpu():
    est = estimate(load(ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml").deployment)
    embeddings = 2 * 128_256 * 8192  # embed_tokens + lm_head stay 16-bit in FP8 checkpoints
    assert est.weights_bytes_per_gpu == ((70.6e9 - embeddings) * 1 + embeddings * 2) / 2
    assert est.kv_bytes_per_token == 2 * 80 * (8 // 2) * 128 * 1  # FP8 KV, 4 of 8 KV heads per GPU
    # KV memory = 0.9 · HBM − weights − reserve, and tokens are whole blocks of it.
    assert est.kv_cache_bytes_per_gpu == pytest.approx(
        0.9 * 85_520_809_984 - est.weights_bytes_per_gpu - est.activation_reserve_bytes_per_gpu)
    assert est.kv_tokens_per_replica == int(est.kv_cache_bytes_per_gpu // (16 * 81_920)) * 16
    assert est.max_concurrent_sequences == est.kv_blocks_per_replica // math.ceil((2048 + 300) / 16)


def test_kv_heads_replicate_when_tp_exceeds_them():
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["engine"]["args"]["tensor_parallel_size"] = 16
    raw["hardware"]["gpus_per_replica"] = 16
    est = estimate(Deployment.model_validate(raw))
    assert est.kv_bytes_per_token == 2 * 80 * 1 * 128 * 1


def test_model_that_does_not_fit_says_why():
    raw = _example("long-context-128k.yaml")  # 70B in BF16
    raw["engine"]["args"]["tensor_parallel_size"] = 1
    raw["hardware"].update(gpu="L40S-48GB", gpus_per_replica=1)
    est = estimate(Deployment.model_validate(raw))
    assert not est.fits and est.kv_tokens_per_replica == 0
    assert "no KV cache" in est.fit_reason and est.growth == []


def test_mla_kv_uses_the_latent_not_heads(tmp_path):
    (tmp_path / "config.json").write_text((FIXTURES / "deepseek-v3" / "config.json").read_text())
    dep = Deployment.model_validate({
        "apiVersion": "forge/v1", "kind": "InferenceDeployment", "metadata": {"name": "dsv3"},
        "model": {"name": "deepseek-v3", "config_path": "config.json",
                  "weights": {"dtype": "fp8", "quantization": "fp8"}},
        "engine": {"name": "vllm", "args": {"tensor_parallel_size": 8}},
        "hardware": {"gpu": "H200-141GB", "gpus_per_replica": 8},
    })
    est = estimate(dep, tmp_path)
    assert est.kv_bytes_per_token == 61 * (512 + 64) * 2  # BF16 latent, replicated on all 8 ranks
    assert est.fits and est.active_params < est.total_params / 10


# ---------------------------------------------------------------- roofline field references
def test_h100_fp8_70b_lands_in_the_field_range():
    est = estimate(_seventy_b_fp8("H100-SXM-80GB"))
    assert 420 <= est.decode_tokens_per_second_per_gpu <= 620
    one = est.growth[0]
    assert one.itl_p95_seconds < 0.045


def test_h200_is_30_to_45_percent_faster_when_memory_bound():
    h100 = replica_step_model(_seventy_b_fp8("H100-SXM-80GB"))
    h200 = replica_step_model(_seventy_b_fp8("H200-141GB"))
    for batch in (32, 64, 128):  # decode steps over 2k-token contexts: weights + KV streaming
        context = batch * (2048 + 150)
        speedup = h100.seconds(batch, context, 0, 0) / h200.seconds(batch, context, 0, 0)
        assert 1.30 <= speedup <= 1.45
    # Prefill is compute-bound and the two share the GH100 compute: no speed-up there.
    assert h100.seconds(0, 0, 4096, 4096 * 2048) == pytest.approx(h200.seconds(0, 0, 4096, 4096 * 2048), rel=0.02)


def test_speculative_decoding_gains_tokens_per_step():
    raw = _example("chat-70b-fp8-h100.yaml")
    plain = replica_step_model(Deployment.model_validate(raw))
    raw["engine"]["args"]["speculative_config"] = {"method": "ngram", "num_speculative_tokens": 3,
                                                   "expected_acceptance_rate": 0.5}
    spec = replica_step_model(Deployment.model_validate(raw))
    assert spec.output_tokens_per_decode_step == pytest.approx((1 - 0.5**4) / (1 - 0.5))  # 1.875
    assert plain.output_tokens_per_decode_step == 1


def test_prefix_cache_hits_lower_ttft():
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["traffic"]["prefix_cache_hit_rate"] = 0.0
    cold = estimate(Deployment.model_validate(raw))
    raw["traffic"]["prefix_cache_hit_rate"] = 0.8
    warm = estimate(Deployment.model_validate(raw))
    assert warm.ttft_p50_seconds < cold.ttft_p50_seconds
    assert warm.max_requests_per_second_per_replica > cold.max_requests_per_second_per_replica


# ---------------------------------------------------------------- growth, queueing, cost
def test_replicas_grow_with_traffic_and_meet_the_slo():
    est = estimate(load(ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml").deployment)
    points = est.growth
    assert [p.multiplier for p in points] == [1.0, 3.0, 10.0]
    needed = [p.replicas_needed for p in points]
    assert needed == sorted(needed) and needed[-1] > needed[0]
    for p in points:
        assert p.replicas_with_headroom >= p.replicas_needed + 1  # N+1 at least
        assert p.ttft_p95_seconds <= 1.5 and p.itl_p95_seconds <= 0.045
        assert 0 < p.utilization <= 1
        assert p.cost_per_hour > 0 and p.idle_gpu_hours_per_day >= 0
    # Ten times the traffic costs more per hour but not more per token (less idle floor per request).
    assert points[-1].cost_per_hour > points[0].cost_per_hour
    assert points[-1].cost_per_million_output_tokens <= points[0].cost_per_million_output_tokens


def test_one_replica_sustains_about_what_the_simulation_says():
    """At the rate the search reports per replica, a single replica's p95s meet the SLO; 30 % above, they don't."""
    from forge.readiness import capacity as cap

    dep = _seventy_b_fp8("H100-SXM-80GB")
    est = estimate(dep)
    rate = est.max_requests_per_second_per_replica
    geo_step = replica_step_model(dep)
    limits = cap.BatchLimits(cap.max_num_seqs(dep, cap.get_gpu(dep.hardware.gpu)), 256, est.kv_tokens_per_replica)
    work = cap.make_workload((2048, 2048, 2048), (300, 300, 300), 0.0, 16)
    at = cap.simulate(geo_step, limits, work, rate)
    above = cap.simulate(geo_step, limits, work, rate * 1.3)
    assert at.itl_p95 <= 0.045 and at.ttft_p95 + 0.005 <= 2.0
    assert above.itl_p95 > 0.045 or above.ttft_p95 > 2.0


def test_missing_traffic_or_slo_does_not_crash():
    raw = _example("chat-70b-fp8-h100.yaml")
    no_traffic = dict(raw)
    no_traffic.pop("traffic")
    no_traffic.pop("slo")
    est = estimate(Deployment.model_validate(no_traffic))
    assert est.growth == [] and est.decode_tokens_per_second_per_gpu is None and est.fits
    assert est.max_concurrent_sequences is None and est.prefill_tokens_per_second_per_gpu > 0
    json.dumps(est.to_dict())
    no_slo = copy.deepcopy(raw)
    no_slo.pop("slo")
    sized = estimate(Deployment.model_validate(no_slo))
    assert sized.growth and all(p.replicas_needed for p in sized.growth)


def test_an_infeasible_slo_gives_no_replica_count():
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["slo"]["itl_p95_seconds"] = 0.001  # below a single decode step
    est = estimate(Deployment.model_validate(raw))
    assert est.growth[0].replicas_needed is None and est.decode_tokens_per_second_per_gpu is None
    assert any("single request" in n for n in est.notes)


def test_price_override_scales_cost():
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["hardware"]["price_per_gpu_hour"] = 1.0
    one = estimate(Deployment.model_validate(raw)).growth[0]
    raw["hardware"]["price_per_gpu_hour"] = 2.0
    two = estimate(Deployment.model_validate(raw)).growth[0]
    assert two.cost_per_hour == pytest.approx(2 * one.cost_per_hour)
    assert two.cost_per_million_output_tokens == pytest.approx(2 * one.cost_per_million_output_tokens)


def test_json_carries_the_keys_the_issue_lists():
    data = json.loads(json.dumps(estimate(load(ROOT / "readiness" / "examples" / "chat-70b-fp8-h100.yaml")
                                          .deployment).to_dict()))
    for key in ("kv_bytes_per_token", "kv_tokens_per_replica", "weights_bytes_per_gpu", "max_concurrent_sequences",
                "decode_tokens_per_second_per_gpu"):
        assert data[key] is not None
    for key in ("multiplier", "replicas_needed", "ttft_p95_seconds", "itl_p95_seconds",
                "cost_per_million_output_tokens"):
        assert all(point[key] is not None for point in data["growth"])


def test_bad_geometry_is_an_input_error():
    raw = _example("chat-70b-fp8-h100.yaml")
    raw["engine"]["args"]["tensor_parallel_size"] = 3
    raw["hardware"]["gpus_per_replica"] = 3
    with pytest.raises(InputError, match="tensor_parallel_size 3 does not divide attention_heads 64"):
        estimate(Deployment.model_validate(raw))


@pytest.mark.parametrize("path", sorted((ROOT / "readiness" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_plans(path):
    loaded = load(path)
    est = estimate(loaded.deployment, loaded.path.parent)
    assert est.kv_bytes_per_token > 0
    json.dumps(est.to_dict())
