"""Capacity & cost model: does the model fit, how much KV cache, how fast, how many replicas at 1×/3×/10×, at what cost.

Everything is derived from deploy.yaml alone (plus the hardware catalog and, optionally, a config.json):

1. memory — weight bytes per GPU, KV bytes per token, KV memory, KV tokens in whole blocks (as vLLM counts them);
2. a per-step roofline of one engine step (compute vs memory bandwidth, plus TP collectives and a fixed overhead);
3. a discrete-event simulation of one continuously batched replica (chunked prefill, prefix-cache hits,
   speculative decoding) under Poisson arrivals, which finds the highest request rate one replica sustains
   within the TTFT/ITL p95 SLO;
4. replicas and cost per growth multiplier, with N+1 and burst headroom and the GPU-hours a day leaves idle.

Formulas and the sources of every factor: docs/capacity.md.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from forge.errors import InputError
from forge.hardware import CALIBRATION_FILE_FORMAT, GPU, Calibration, Efficiency, get as get_gpu, load_calibration
from forge.load.arrivals import inter_arrival_gaps
from forge.models import ModelGeometry, dtype_bytes, geometry, layers_per_stage
from forge.schema import Deployment, RateProfile, TokenProfile

GiB = 1024**3

# vLLM's defaults (vllm/config/cache.py CacheConfig, vllm/engine/arg_utils.py EngineArgs, V1 engine).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# vLLM V1 raises max_num_batched_tokens / max_num_seqs on GPUs with >= 70 GiB (EngineArgs._set_default_args,
# OpenAI API server usage context): 8192 / 1024 there, 2048 / 256 on smaller GPUs.
LARGE_GPU_BYTES = 70 * GiB
DEFAULT_BATCHED_TOKENS = {True: 8192, False: 2048}
DEFAULT_MAX_NUM_SEQS = {True: 1024, False: 256}
# vLLM 0.32 CPU backend: with VLLM_CPU_KVCACHE_SPACE unset, the KV cache is the NUMA node's memory times
# gpu_memory_utilization (0.92 default on CPU) minus what the worker uses (vllm/v1/worker/cpu_worker.py).
CPU_DEFAULT_MEMORY_UTILIZATION = 0.92
# KV block size when the deploy file leaves it to the engine: vLLM uses 16 on GPUs, 128 on its CPU backend
# (vllm/platforms/cpu.py; measured: `num_gpu_blocks` 16384 for 2,097,152 tokens).
DEFAULT_BLOCK_SIZE = {"gpu": 16, "cpu": 128}

# Runtime memory vLLM needs beside weights and KV (its profiling log reports these three parts):
# non-torch memory (CUDA context, cuBLAS workspaces, NCCL buffers) and CUDA-graph pools, about 1 GiB and
# 0.5 GiB on Hopper-class GPUs in vLLM's "Memory profiling takes ..." log lines, plus the activation peak of a
# profile run at max_num_batched_tokens (estimated below).
NON_TORCH_RESERVE_BYTES = 1 * GiB
CUDA_GRAPH_RESERVE_BYTES = GiB // 2
# Live activations of one forward pass, per token, in units of hidden_size 16-bit values: residual, normed input,
# QKV, attention output and the SwiGLU gate/up/act buffers (≈3.5 × hidden each, sharded by TP) at their peak.
ACTIVATION_HIDDEN_MULTIPLE = 4 + 3 * 3.5

# Spot: what a reclaim notice leaves in-flight requests. AWS gives 2 minutes, GCP and Azure 30 s (provider docs:
# EC2 "Spot Instance interruption notices", GCE "Preemption process", Azure "Spot VMs"); unknown → 30 s.
SPOT_NOTICE_SECONDS = {"aws": 120.0, "gcp": 30.0, "azure": 30.0, "kubernetes": 30.0, None: 30.0}
KUBERNETES_DEFAULT_GRACE_SECONDS = 30.0   # terminationGracePeriodSeconds default
# Re-warm of a replacement replica when reliability.startup_seconds is not declared: vLLM's start-up (56–58 s measured
# on the reference machine, ../shared/notes/vllm-cpu.md) plus reading the weights at 2 GB/s (an assumption of one
# local NVMe or node-cache read; declare startup_seconds from a measured cold start instead).
ENGINE_START_SECONDS = 60.0
WEIGHT_LOAD_BYTES_PER_SECOND = 2e9
SPOT_EXTRA_SPARES = 1

# Speculative decoding without a declared acceptance rate: ngram / EAGLE report 0.6–0.8 on chat traffic
# (vLLM spec-decode docs and EAGLE paper, Li et al. 2024); take the low end.
DEFAULT_SPEC_ACCEPTANCE = 0.6

# A day read off the rate quantiles: half of it at p50 or below, 45 % between p50 and p95, 5 % at peak.
DAY_PROFILE_HOURS = (("p50", 12.0), ("p95", 10.8), ("peak", 1.2))
# Burst headroom: the floor absorbs bursts up to 20 % above p95 (or up to peak, when lower) while the
# autoscaler brings more replicas up; the N+1 spare is added on top.
BURST_HEADROOM = 0.2
# Without a latency SLO, size replicas to this share of one replica's saturated throughput.
TARGET_UTILIZATION_WITHOUT_SLO = 0.8

# Discrete-event simulation bounds: enough requests for a stable p95 (≥ 15 above it after warm-up), few enough
# that a deploy.yaml plans in tens of milliseconds.
SIMULATED_REQUESTS = 320
WARMUP_REQUESTS = 32
MAX_STEPS_PER_EVENT = 64  # re-evaluate step time at least this often while contexts grow
RATE_SEARCH_ITERATIONS = 7
# A declared trace is replayed from its start, at most this many requests (see trace_workload).
MAX_TRACE_REQUESTS = 1000
SIMULATION_SEED = 20261101


# ---------------------------------------------------------------- results
@dataclass
class GrowthPoint:
    multiplier: float
    requests_per_second: float            # p95 rate × multiplier: what the floor is sized for
    replicas_needed: int | None           # to meet the SLO at that rate (None: a single request misses it)
    replicas_with_headroom: int | None    # + burst headroom + one spare (N+1)
    ttft_p95_seconds: float | None
    itl_p95_seconds: float | None
    utilization: float | None             # share of the replicas' saturated throughput in use at that rate
    cost_per_hour: float | None           # day-average provisioned GPUs × price
    cost_per_million_output_tokens: float | None
    cost_per_million_input_tokens: float | None
    cost_per_successful_request: float | None
    idle_gpu_hours_per_day: float | None  # provisioned minus needed GPU-hours over a p50/p95/peak day

    def to_dict(self) -> dict[str, Any]:
        return {k: _rounded(v) for k, v in asdict(self).items()}


@dataclass
class CapacityEstimate:
    gpu: str
    gpus_per_replica: int
    tensor_parallel_size: int
    weights_dtype: str
    kv_cache_dtype: str
    weights_bytes_per_gpu: float
    activation_reserve_bytes_per_gpu: float
    kv_bytes_per_token: float             # per GPU
    kv_cache_bytes_per_gpu: float
    kv_blocks_per_replica: int
    kv_tokens_per_replica: int
    fits: bool
    fit_reason: str
    total_params: float
    active_params: float
    max_concurrent_sequences: int | None  # sequences of p95 prompt + p95 output the KV cache holds at once
    max_context_tokens_fit: int           # the longest single context one replica's KV cache holds
    prefill_tokens_per_second_per_gpu: float | None
    decode_tokens_per_second_per_gpu: float | None  # output tokens/s per GPU at the highest SLO-meeting rate
    max_requests_per_second_per_replica: float | None
    ttft_p50_seconds: float | None
    itl_p50_seconds: float | None
    growth: list[GrowthPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spot: SpotEconomics | None = None     # spot vs on-demand at 1×, net of interruptions
    calibration: str | None = None        # "calibrated from FILE (...)", or None: the hardware catalog's factors

    def to_dict(self) -> dict[str, Any]:
        out = {k: _rounded(v) for k, v in asdict(self).items() if k not in ("growth", "spot")}
        out["growth"] = [p.to_dict() for p in self.growth]
        out["spot"] = self.spot.to_dict() if self.spot is not None else None
        return out


@dataclass
class SpotEconomics:
    """Spot vs on-demand for the 1× fleet, net of what reclaims cost (docs/capacity.md, "Spot economics")."""

    interruptions_per_replica_hour: float
    interruption_source: str
    replicas: float                       # day-average provisioned replicas at 1× (the on-demand fleet)
    extra_spare_replicas: int             # spot keeps one more spare: a reclaim can land on top of a failure
    drain_window_seconds: float           # what in-flight requests get after a reclaim notice (0: none)
    drain_failure_probability: float      # share of in-flight requests a reclaim kills
    in_flight_requests_per_replica: float
    rewarm_seconds: float                 # replacement replica: cold start to ready (paid, serving nothing)
    lost_requests_per_day: float
    error_budget_requests_per_day: float | None
    on_demand_cost_per_hour: float
    spot_list_cost_per_hour: float        # the same replicas at the spot price, before interruptions
    spot_effective_cost_per_hour: float   # + the extra spare, re-warm and redone work
    net_savings_per_hour: float
    net_savings_fraction: float
    on_demand_cost_per_million_output_tokens: float | None
    spot_effective_cost_per_million_output_tokens: float | None
    on_demand_floor_cost_per_hour: float  # on-demand floor (p50 replicas + 1), spot above it

    def to_dict(self) -> dict[str, Any]:
        return {k: _rounded(v) for k, v in asdict(self).items()}


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


# ---------------------------------------------------------------- memory
def _engine_extra(deployment: Deployment, key: str) -> Any:
    return (deployment.engine.args.model_extra or {}).get(key)


def weights_dtype(deployment: Deployment, geo: ModelGeometry) -> str:
    weights = deployment.model.weights
    if weights is not None:
        return weights.dtype
    quant = str(_engine_extra(deployment, "quantization") or "").lower()
    if quant in ("fp8", "modelopt", "fbgemm_fp8"):
        return "fp8"
    if quant in ("awq", "gptq", "awq_marlin", "gptq_marlin", "bitsandbytes"):
        return "int4"
    engine_dtype = str(_engine_extra(deployment, "dtype") or "auto").lower()
    if engine_dtype in ("bfloat16", "bf16"):
        return "bf16"
    if engine_dtype in ("float16", "half", "fp16"):
        return "fp16"
    # vLLM's dtype "auto": the checkpoint's dtype, except FP32 checkpoints are served in FP16 (ModelConfig docs).
    if geo.config_dtype in ("bf16", "fp16"):
        return geo.config_dtype
    if geo.config_dtype == "fp32":
        return "fp16"
    return "bf16"


def activation_dtype(weights: str, geo: ModelGeometry) -> str:
    # Quantized checkpoints still compute activations (and keep an "auto" KV cache) in 16-bit.
    if weights in ("bf16", "fp16"):
        return weights
    return geo.config_dtype if geo.config_dtype in ("bf16", "fp16") else "bf16"


def kv_dtype(deployment: Deployment, activations: str) -> str:
    declared = deployment.engine.args.kv_cache_dtype
    return activations if declared == "auto" else declared


def weight_bytes_total(geo: ModelGeometry, dtype: str) -> float:
    per_param = dtype_bytes(dtype, "model.weights.dtype")
    if dtype in ("fp8", "int8", "int4"):
        # FP8/INT8/AWQ/GPTQ checkpoints keep embed_tokens and lm_head in 16-bit (e.g. the published
        # Llama-3.1-70B-Instruct-FP8 checkpoints, AutoAWQ's default modules_to_not_convert).
        return (geo.total_params - geo.embedding_params) * per_param + geo.embedding_params * 2
    return geo.total_params * per_param


def kv_bytes_per_token_per_gpu(geo: ModelGeometry, kv_cache_dtype: str, tensor_parallel: int,
                               pipeline_parallel: int) -> float:
    """2 · layers · kv_heads · head_dim · bytes / TP (MLA: layers · (kv_lora_rank + rope dim) · bytes)."""
    per_element = dtype_bytes(kv_cache_dtype, "engine.args.kv_cache_dtype")
    return layers_per_stage(geo, pipeline_parallel) * geo.kv_elements_per_token_per_layer(tensor_parallel) * per_element


@dataclass(frozen=True)
class MemoryPlan:
    weights_bytes_per_gpu: float
    activation_reserve_bytes_per_gpu: float
    kv_bytes_per_token: float
    kv_cache_bytes_per_gpu: float
    kv_blocks: int
    kv_tokens: int
    fits: bool
    fit_reason: str


def plan_memory(deployment: Deployment, geo: ModelGeometry, gpu: GPU, weights: str, kv_cache_dtype: str) -> MemoryPlan:
    args = deployment.engine.args
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    weights_per_gpu = weight_bytes_total(geo, weights) / (tp * pp)
    kv_per_token = kv_bytes_per_token_per_gpu(geo, kv_cache_dtype, tp, pp)
    block_bytes = block_size(deployment) * kv_per_token
    is_cpu = gpu.id == "CPU"

    if is_cpu:
        # vLLM's CPU backend sizes the KV cache from VLLM_CPU_KVCACHE_SPACE, not from a share of memory;
        # the reference stack mirrors that value into kv_cache_memory_bytes.
        reserve = 0.0
        utilization = args.gpu_memory_utilization or CPU_DEFAULT_MEMORY_UTILIZATION
        kv_memory = float(args.kv_cache_memory_bytes or max(0.0, utilization * gpu.memory_bytes - weights_per_gpu))
        used = weights_per_gpu + kv_memory
        room = float(gpu.memory_bytes)
        problem = (f"weights {weights_per_gpu / GiB:.2f} GiB + KV cache {kv_memory / GiB:.2f} GiB exceed the "
                   f"{room / GiB:.0f} GiB of host memory") if used > room else ""
    else:
        reserve = activation_reserve_bytes(deployment, geo, gpu)
        if args.kv_cache_memory_bytes:
            # vLLM takes kv_cache_memory_bytes as is and ignores gpu_memory_utilization.
            kv_memory = float(args.kv_cache_memory_bytes)
            room = float(gpu.memory_bytes)
            used = weights_per_gpu + reserve + kv_memory
            problem = (f"weights {weights_per_gpu / GiB:.1f} GiB + runtime {reserve / GiB:.1f} GiB + KV cache "
                       f"{kv_memory / GiB:.1f} GiB exceed the GPU's {room / GiB:.1f} GiB") if used > room else ""
        else:
            utilization = args.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
            room = utilization * gpu.memory_bytes
            kv_memory = max(0.0, room - weights_per_gpu - reserve)
            problem = ""
            if kv_memory < block_bytes:
                problem = (f"weights {weights_per_gpu / GiB:.1f} GiB + runtime {reserve / GiB:.1f} GiB per GPU leave "
                           f"no KV cache in {utilization:.2f} × {gpu.memory_bytes / GiB:.1f} GiB")
    # vLLM allocates whole blocks: num_blocks = memory // (block_size · bytes per token), tokens = blocks · size.
    blocks = int(kv_memory // block_bytes) if block_bytes > 0 else 0
    tokens = blocks * block_size(deployment)
    if not problem and blocks == 0:
        problem = f"KV memory {kv_memory:.0f} B holds not even one {block_size(deployment)}-token block"
    fits = not problem
    reason = problem or (f"weights {weights_per_gpu / GiB:.2f} GiB/GPU, KV cache {kv_memory / GiB:.2f} GiB/GPU = "
                         f"{tokens:,} tokens per replica")
    return MemoryPlan(weights_per_gpu, reserve, kv_per_token, kv_memory if fits else max(kv_memory, 0.0),
                      blocks if fits else 0, tokens if fits else 0, fits, reason)


def _is_large_gpu(gpu: GPU) -> bool:
    return gpu.memory_bytes >= LARGE_GPU_BYTES


def max_batched_tokens(deployment: Deployment, gpu: GPU) -> int:
    return deployment.engine.args.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS[_is_large_gpu(gpu)]


def block_size(deployment: Deployment) -> int:
    declared = deployment.engine.args.block_size
    return declared or DEFAULT_BLOCK_SIZE["cpu" if deployment.hardware.gpu == "CPU" else "gpu"]


def max_num_seqs(deployment: Deployment, gpu: GPU) -> int:
    return deployment.engine.args.max_num_seqs or DEFAULT_MAX_NUM_SEQS[_is_large_gpu(gpu)]


def activation_reserve_bytes(deployment: Deployment, geo: ModelGeometry, gpu: GPU) -> float:
    """Activation peak of vLLM's profile run plus non-torch memory and CUDA graphs, per GPU."""
    tp = deployment.engine.args.tensor_parallel_size
    tokens = max_batched_tokens(deployment, gpu)
    activations = tokens * geo.hidden_size * 2 * (4 + (ACTIVATION_HIDDEN_MULTIPLE - 4) / tp)
    # The sampler holds float32 logits for up to max_num_seqs rows of the vocabulary.
    logits = min(max_num_seqs(deployment, gpu), tokens) * (geo.vocab_size or 0) * 4
    graphs = 0 if _engine_extra(deployment, "enforce_eager") else CUDA_GRAPH_RESERVE_BYTES
    return float(activations + logits + NON_TORCH_RESERVE_BYTES + graphs)


# ---------------------------------------------------------------- step roofline
@dataclass(frozen=True)
class StepModel:
    """Seconds one engine step of a replica takes, from the roofline of one GPU of one pipeline stage."""

    dense_weight_bytes: float          # per GPU, read every step
    expert_weight_bytes: float         # per GPU, all routed experts (MoE); a step reads those its tokens pick
    num_experts: int
    experts_per_token: int
    kv_bytes_per_token: float          # per GPU
    matmul_flops_per_token: float      # per GPU
    attention_flops_per_context_token: float  # per GPU, per (query token × attended token)
    lm_head_flops_per_sequence: float  # per GPU, once per sampled sequence
    peak_flops: float                  # achievable: datasheet × compute efficiency
    bandwidth: float                   # achievable: datasheet × bandwidth efficiency
    allreduces_per_step: int
    allreduce_bytes_per_token: float
    link_bytes_per_second: float
    collective_latency_seconds: float
    overhead_seconds: float
    pipeline_stages: int
    tokens_per_decode_step: float      # tokens a decoding sequence feeds per step (1, or k+1 with speculation)
    output_tokens_per_decode_step: float  # tokens it gains per step (speculation: expected accepted + 1)
    sequence_overhead_seconds: float = 0.0  # host time per sequence sampled in a step (Efficiency's docstring)

    def seconds(self, decoders: int, decode_context: float, prefill_tokens: float, prefill_context: float) -> float:
        tokens = decoders * self.tokens_per_decode_step + prefill_tokens
        flops = (self.matmul_flops_per_token * tokens
                 + self.attention_flops_per_context_token * (decode_context * self.tokens_per_decode_step
                                                             + prefill_context)
                 + self.lm_head_flops_per_sequence * (decoders + (1 if prefill_tokens else 0)))
        weight_bytes = self.dense_weight_bytes
        if self.expert_weight_bytes:
            # Experts a step touches: each of `tokens` tokens picks k of E, so E · (1 − (1 − k/E)^tokens).
            touched = 1.0 - (1.0 - self.experts_per_token / self.num_experts) ** tokens
            weight_bytes += self.expert_weight_bytes * touched
        memory_bytes = weight_bytes + self.kv_bytes_per_token * decode_context
        roofline = max(flops / self.peak_flops, memory_bytes / self.bandwidth)
        collectives = self.allreduces_per_step * (
            self.collective_latency_seconds + self.allreduce_bytes_per_token * tokens / self.link_bytes_per_second)
        sampled = decoders + (1 if prefill_tokens else 0)
        return (roofline + collectives + self.overhead_seconds
                + self.sequence_overhead_seconds * sampled) * self.pipeline_stages


def compute_dtype(weights: str, gpu: GPU) -> str:
    # W8A8 FP8 / INT8 run on 8-bit tensor cores where the GPU has them; weight-only INT4 and GPUs without FP8
    # (A100: vLLM's Marlin kernels) dequantize to 16-bit and compute there.
    if weights == "fp8" and gpu.supports("fp8"):
        return "fp8"
    if weights == "int8" and gpu.supports("int8"):
        return "int8"
    return "bf16"


def speculation(deployment: Deployment) -> tuple[float, float]:
    """(tokens fed per step, tokens gained per step) for one decoding sequence."""
    spec = deployment.engine.args.speculative_config
    if spec is None:
        return 1.0, 1.0
    k = spec.num_speculative_tokens
    alpha = spec.expected_acceptance_rate if spec.expected_acceptance_rate is not None else DEFAULT_SPEC_ACCEPTANCE
    # Expected tokens per verification step with k drafts and i.i.d. acceptance α (Leviathan et al. 2023, eq. 1).
    gained = float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return float(k + 1), gained


def step_model(deployment: Deployment, geo: ModelGeometry, gpu: GPU, weights: str, kv_per_token: float) -> StepModel:
    args = deployment.engine.args
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    shards = tp * pp
    per_param = dtype_bytes(weights, "model.weights.dtype")
    expert_bytes = geo.expert_params * per_param / shards if geo.is_moe else 0.0
    dense_bytes = weight_bytes_total(geo, weights) / shards - expert_bytes
    # Each token passes the active parameters once (2 FLOPs per multiply-add); the input embedding is a lookup
    # and lm_head runs only for sampled positions.
    lm_head_params = (geo.vocab_size or 0) * geo.hidden_size
    input_embedding = geo.embedding_params - lm_head_params if geo.embedding_params > lm_head_params else 0.0
    matmul_params = max(geo.active_params - input_embedding - lm_head_params, 0.0)
    heads_per_gpu = geo.attention_heads / tp
    precision = compute_dtype(weights, gpu)
    tokens_fed, tokens_gained = speculation(deployment)
    act_bytes = 2
    return StepModel(
        dense_weight_bytes=max(dense_bytes, 0.0), expert_weight_bytes=expert_bytes,
        num_experts=geo.num_experts or 1, experts_per_token=geo.experts_per_token or 1,
        kv_bytes_per_token=kv_per_token,
        matmul_flops_per_token=2 * matmul_params / shards,
        # QKᵀ and P·V: 2 matmuls × 2 FLOPs per head dimension, per query/key pair.
        attention_flops_per_context_token=4 * layers_per_stage(geo, pp) * heads_per_gpu * geo.head_dim,
        lm_head_flops_per_sequence=2 * lm_head_params / tp,
        peak_flops=gpu.achievable_flops(precision),
        bandwidth=gpu.memory_bandwidth_bytes_per_second * gpu.efficiency.memory_bandwidth,
        # Megatron-style TP: one all-reduce after attention and one after the MLP, per layer.
        allreduces_per_step=2 * layers_per_stage(geo, pp) if tp > 1 else 0,
        # Ring all-reduce moves 2 (TP − 1) / TP of the buffer per GPU; the catalog lists bidirectional bandwidth.
        allreduce_bytes_per_token=geo.hidden_size * act_bytes * 2 * (tp - 1) / tp,
        link_bytes_per_second=gpu.interconnect_bytes_per_second / 2,
        collective_latency_seconds=gpu.efficiency.collective_latency_seconds,
        overhead_seconds=gpu.efficiency.step_overhead_seconds, pipeline_stages=pp,
        tokens_per_decode_step=tokens_fed, output_tokens_per_decode_step=tokens_gained,
        sequence_overhead_seconds=gpu.efficiency.sequence_overhead_seconds,
    )


# ---------------------------------------------------------------- workload and simulation
@dataclass(frozen=True)
class Workload:
    prompts: tuple[int, ...]
    computed_prompt_tokens: tuple[int, ...]  # after prefix-cache hits
    outputs: tuple[int, ...]
    kv_tokens_needed: tuple[int, ...]        # whole blocks for prompt + output
    unit_arrivals: tuple[float, ...]         # Poisson arrival times at 1 request/s

    @property
    def mean_prompt(self) -> float:
        return sum(self.prompts) / len(self.prompts)

    @property
    def mean_output(self) -> float:
        return sum(self.outputs) / len(self.outputs)

    @property
    def mean_computed_prompt(self) -> float:
        return sum(self.computed_prompt_tokens) / len(self.computed_prompt_tokens)


def _lengths(rng: random.Random, profile: tuple[int, int, int], n: int) -> list[int]:
    """Log-normal lengths with the declared median (p50) and p95, clipped to [1, max]."""
    p50, p95, longest = profile
    median = max(p50, 1)
    upper = max(longest, 1)
    if p95 <= median:
        return [min(median, upper)] * n
    sigma = math.log(p95 / median) / 1.6448536  # z of the 95th percentile
    return [min(max(1, round(median * math.exp(sigma * rng.gauss(0.0, 1.0)))), upper) for _ in range(n)]


def _workload(prompts: list[int], outputs: list[int], unit_arrivals: list[float], prefix_hit_rate: float,
              block_size: int) -> Workload:
    # Prefix-cache hits are whole blocks, and vLLM always recomputes at least the last prompt token.
    computed = [max(1, p - (int(p * prefix_hit_rate) // block_size) * block_size) for p in prompts]
    kv = [math.ceil((p + o) / block_size) * block_size for p, o in zip(prompts, outputs)]
    return Workload(tuple(prompts), tuple(computed), tuple(outputs), tuple(kv), tuple(unit_arrivals))


@lru_cache(maxsize=1024)
def make_workload(prompt: tuple[int, int, int], output: tuple[int, int, int], prefix_hit_rate: float, block_size: int,
                  burstiness: float | None = None) -> Workload:
    """Log-normal lengths and arrivals at 1 request/s: Poisson, or gamma gaps with CV `burstiness`."""
    rng = random.Random(SIMULATION_SEED)
    n = SIMULATED_REQUESTS
    prompts = _lengths(rng, prompt, n)
    outputs = [max(1, o) for o in _lengths(rng, output, n)]
    arrivals, t = [], 0.0
    if burstiness is None:
        for _ in range(n):
            t += rng.expovariate(1.0)
            arrivals.append(t)
    else:
        # The load generator's own gamma process (`forge load run --arrival gamma --burstiness CV`), so a plan and
        # the replay that validates it share one definition of burstiness.
        gaps = inter_arrival_gaps("gamma", 1.0, burstiness, SIMULATION_SEED)
        for _ in range(n):
            t += next(gaps)
            arrivals.append(t)
    return _workload(prompts, outputs, arrivals, prefix_hit_rate, block_size)


@lru_cache(maxsize=16)
def _trace_entries(path: str, stamp: tuple[float, int]) -> tuple[list, float]:
    from forge.load.traces import load_trace  # only a trace-driven deploy file needs the trace readers

    entries = load_trace(Path(path))[:MAX_TRACE_REQUESTS]
    if len(entries) < 2 or entries[-1].offset_s <= entries[0].offset_s:
        raise InputError(f"traffic.arrival.trace {path}: needs at least two requests at different times to give a "
                         "rate — use a longer trace")
    return entries, (len(entries) - 1) / (entries[-1].offset_s - entries[0].offset_s)


@lru_cache(maxsize=1024)
def thinned_trace_workload(path: str, stamp: tuple[float, int], prefix_hit_rate: float, block_size: int,
                           replicas: int) -> Workload:
    """What one of `replicas` replicas sees of a trace split at random: each request kept with probability 1/N.

    The trace is replayed end to end repeatedly (each pass shifted by its span plus one mean gap) until
    SIMULATED_REQUESTS are kept, so rate swings longer than a gap survive while short bursts thin out, as they do
    behind a load balancer. Unit arrivals keep the aggregate's time scale: simulate at rate/N.
    """
    entries, mean_rate = _trace_entries(path, stamp)
    if replicas <= 1:
        return trace_workload(path, stamp, prefix_hit_rate, block_size)[0]
    rng = random.Random(SIMULATION_SEED + replicas)
    origin = entries[0].offset_s
    period = entries[-1].offset_s - origin + 1.0 / mean_rate
    keep = math.log1p(-1.0 / replicas)
    kept, index, count = [], -1, len(entries)
    while len(kept) < SIMULATED_REQUESTS:
        # Geometric skip to the next kept request: O(kept) draws however many replicas share the trace.
        index += 1 + int(math.log(1.0 - rng.random()) / keep)
        cycle, position = divmod(index, count)
        kept.append((entries[position], cycle * period + entries[position].offset_s - origin))
    first = kept[0][1]
    return _workload([e.prompt_tokens for e, _ in kept], [e.output_tokens for e, _ in kept],
                     [(t - first) * mean_rate / replicas for _, t in kept], prefix_hit_rate, block_size)


@lru_cache(maxsize=64)
def trace_workload(path: str, stamp: tuple[float, int], prefix_hit_rate: float,
                   block_size: int) -> tuple[Workload, float]:
    """A recorded trace (load/traces.py formats): its own lengths and gaps, time-scaled to 1 request/s on average,
    and the trace's own mean rate (requests/s).

    The first MAX_TRACE_REQUESTS entries are kept: enough for the trace's bursts to show, few enough to plan fast.
    `stamp` (mtime, size) keys the cache so an edited trace is read again.
    """
    entries, mean_rate = _trace_entries(path, stamp)
    work = _workload([e.prompt_tokens for e in entries], [e.output_tokens for e in entries],
                     [(e.offset_s - entries[0].offset_s) * mean_rate for e in entries], prefix_hit_rate, block_size)
    return work, mean_rate


@dataclass(frozen=True)
class BatchLimits:
    max_num_seqs: int
    max_batched_tokens: int
    kv_tokens: int


@dataclass(frozen=True)
class SimulationResult:
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    requests_per_second: float   # completions over the simulated span
    output_tokens_per_second: float
    busy_fraction: float
    # Per request, as a streaming client measures it: TPOT = (finish − first token) / (output tokens − 1).
    tpot_p50: float = 0.0
    tpot_p95: float = 0.0
    # With details=True: each request's TTFT and finish time (seconds from the first arrival), in request order.
    request_ttft: tuple[float, ...] = ()
    request_finish: tuple[float, ...] = ()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def _weighted_percentile(pairs: list[tuple[float, float]], q: float) -> float:
    if not pairs:
        return 0.0
    pairs.sort()
    total = sum(w for _, w in pairs)
    running = 0.0
    for value, weight in pairs:
        running += weight
        if running >= q * total:
            return value
    return pairs[-1][0]


def _weighted_percentiles(pairs: list[tuple[float, float]], quantiles: tuple[float, ...]) -> list[float]:
    """_weighted_percentile for several quantiles with one sort (the same values, bit for bit)."""
    if not pairs:
        return [0.0 for _ in quantiles]
    pairs.sort()
    total = 0
    for _, weight in pairs:
        total += weight
    out = []
    for q in quantiles:
        threshold = q * total
        running = 0.0
        value = pairs[-1][0]
        for v, weight in pairs:
            running += weight
            if running >= threshold:
                value = v
                break
        out.append(value)
    return out


def simulate(step: StepModel, limits: BatchLimits, work: Workload, rate: float | None,
             warmup: int = WARMUP_REQUESTS, details: bool = False) -> SimulationResult:
    """One replica under continuous batching; `rate` requests/s (Poisson), or None for all at once (saturation).

    Each engine step feeds every running sequence its decode token(s), then fills the rest of the token budget
    with prompt chunks, first come first served (vLLM's chunked prefill). Between events (an arrival, a prefill
    finishing, a sequence finishing) the batch does not change, so the loop jumps over whole runs of identical
    steps: cost is O(requests · log requests), not O(steps).
    """
    # The hot loop: StepModel.seconds is inlined with its fields bound to locals, and min/max are written as
    # comparisons. The arithmetic is the same, operation for operation, so results are bit-identical.
    n = len(work.prompts)
    arrivals = [a / rate for a in work.unit_arrivals] if rate else [0.0] * n
    prompts = work.prompts
    outputs = work.outputs
    kv_needed = work.kv_tokens_needed
    computed_prompt = work.computed_prompt_tokens
    max_seqs = limits.max_num_seqs
    kv_tokens = limits.kv_tokens
    max_batched = limits.max_batched_tokens
    gained = step.output_tokens_per_decode_step
    fed = step.tokens_per_decode_step
    matmul = step.matmul_flops_per_token
    attention = step.attention_flops_per_context_token
    lm_head = step.lm_head_flops_per_sequence
    dense_bytes = step.dense_weight_bytes
    expert_bytes = step.expert_weight_bytes
    expert_miss = (1.0 - step.experts_per_token / step.num_experts) if expert_bytes else 0.0
    kv_per_token = step.kv_bytes_per_token
    peak = step.peak_flops
    bandwidth = step.bandwidth
    allreduces = step.allreduces_per_step
    collective_latency = step.collective_latency_seconds
    allreduce_bytes = step.allreduce_bytes_per_token
    link = step.link_bytes_per_second
    step_overhead = step.overhead_seconds
    sequence_overhead = step.sequence_overhead_seconds
    stages = step.pipeline_stages
    max_steps = MAX_STEPS_PER_EVENT
    ceil = math.ceil
    heappush, heappop = heapq.heappush, heapq.heappop
    t = 0.0
    steps_done = 0
    next_arrival = 0
    next_arrival_time = arrivals[0] if n else math.inf
    waiting: deque[int] = deque()
    prefilling: deque[list[float]] = deque()  # [request, tokens left to compute, context already cached]
    pending_prefill = 0.0
    decoding: list[tuple[int, int, float]] = []  # (finishing step, request, context base)
    context_base = 0.0  # Σ (start context − start step · gained); context sum = base + B · gained · step
    kv_used = 0
    ttft = [0.0] * n
    finished_at = [0.0] * n
    itl: list[tuple[float, float]] = []
    itl_append = itl.append
    busy = 0.0
    warm_time = arrivals[warmup if warmup < n - 1 else n - 1]

    while True:
        while next_arrival < n and next_arrival_time <= t:
            waiting.append(next_arrival)
            next_arrival += 1
            next_arrival_time = arrivals[next_arrival] if next_arrival < n else math.inf
        while waiting and len(decoding) + len(prefilling) < max_seqs:
            req = waiting[0]
            need = kv_needed[req]
            # Reserve prompt + output up front (no preemption); an oversize request runs alone.
            if kv_used + need > kv_tokens and (decoding or prefilling):
                break
            waiting.popleft()
            kv_used += need
            computed = computed_prompt[req]
            prefilling.append([req, float(computed), float(prompts[req] - computed)])
            pending_prefill += computed
        if not decoding and not prefilling:
            if next_arrival >= n:
                break
            if next_arrival_time > t:
                t = next_arrival_time
            continue

        batch = len(decoding)
        context_sum = context_base + batch * gained * steps_done
        if prefilling:
            head = prefilling[0]
            budget = max_batched - batch * fed
            if budget > 0:
                chunk = float(budget)
                if pending_prefill < chunk:
                    chunk = pending_prefill
            else:
                chunk = 0.0
            if batch == 0 and chunk <= 0:
                chunk = float(max_batched)
                if pending_prefill < chunk:
                    chunk = pending_prefill
            chunk_context = chunk * (head[2] + chunk / 2) if chunk else 0.0
        else:
            head = None
            chunk = chunk_context = 0.0
        sampled = batch + 1 if chunk else batch

        # StepModel.seconds(batch, context_sum, chunk, chunk_context), inlined. A term that is zero for this
        # replica (no tensor-parallel collectives, no per-sequence overhead, one pipeline stage) is skipped:
        # adding 0.0 or multiplying by 1 changes no bit.
        tokens = batch * fed + chunk
        flops = (matmul * tokens
                 + attention * (context_sum * fed + chunk_context)
                 + lm_head * sampled)
        weight_bytes = dense_bytes
        if expert_bytes:
            touched = 1.0 - expert_miss ** tokens
            weight_bytes += expert_bytes * touched
        memory_bytes = weight_bytes + kv_per_token * context_sum
        compute_time = flops / peak
        memory_time = memory_bytes / bandwidth
        dt = memory_time if memory_time > compute_time else compute_time
        if allreduces:
            dt = dt + allreduces * (collective_latency + allreduce_bytes * tokens / link)
        dt = dt + step_overhead
        if sequence_overhead:
            dt = dt + sequence_overhead * sampled
        if stages != 1:
            dt = dt * stages

        k = max_steps
        if chunk:
            bound = ceil(head[1] / chunk - 1e-9)
            if bound < k:
                k = bound
        if batch:
            bound = decoding[0][0] - steps_done
            if bound < k:
                k = bound
        if next_arrival < n:
            bound = ceil((next_arrival_time - t) / dt)
            if bound < k:
                k = bound
        if k < 1:
            k = 1

        if batch and t >= warm_time:
            itl_append((dt / gained, batch * k))
        elapsed = k * dt
        t += elapsed
        busy += elapsed
        steps_done += k

        if chunk:
            consumed = k * chunk
            while prefilling and consumed > 1e-9:
                entry = prefilling[0]
                if entry[1] <= consumed + 1e-9:
                    consumed -= entry[1]
                    pending_prefill -= entry[1]
                    prefilling.popleft()
                    req = int(entry[0])
                    ttft[req] = t - arrivals[req]  # the step that ends the prefill samples the first token
                    remaining = outputs[req] - 1
                    if remaining <= 0:
                        finished_at[req] = t
                        kv_used -= kv_needed[req]
                        continue
                    start_context = prompts[req] + 1
                    base = start_context - gained * steps_done
                    heappush(decoding, (steps_done + ceil(remaining / gained), req, base))
                    context_base += base
                else:
                    entry[1] -= consumed
                    entry[2] += consumed
                    pending_prefill -= consumed
                    consumed = 0.0
        while decoding and decoding[0][0] <= steps_done:
            _, req, base = heappop(decoding)
            context_base -= base
            kv_used -= kv_needed[req]
            finished_at[req] = t

    measured = range(min(warmup, n - 1), n)
    ttfts = sorted(ttft[i] for i in measured)
    span = max(finished_at) - (arrivals[measured[0]] if rate else 0.0)
    completed = len(measured)
    out_tokens = sum(outputs[i] for i in measured)
    itl_p50, itl_p95 = _weighted_percentiles(itl, (0.50, 0.95))
    tpots = sorted((finished_at[i] - arrivals[i] - ttft[i]) / (outputs[i] - 1) for i in measured if outputs[i] > 1)
    return SimulationResult(
        ttft_p50=_percentile(ttfts, 0.50), ttft_p95=_percentile(ttfts, 0.95),
        itl_p50=itl_p50, itl_p95=itl_p95,
        requests_per_second=completed / span if span > 0 else 0.0,
        output_tokens_per_second=out_tokens / span if span > 0 else 0.0,
        busy_fraction=min(1.0, busy / t) if t > 0 else 0.0,
        tpot_p50=_median(tpots) or 0.0, tpot_p95=_percentile(tpots, 0.95),
        request_ttft=tuple(ttft) if details else (), request_finish=tuple(finished_at) if details else (),
    )


# ---------------------------------------------------------------- replica sizing
@dataclass(frozen=True)
class ReplicaCapacity:
    saturated_requests_per_second: float
    max_requests_per_second: float | None   # highest rate meeting the SLO (None: not even one request does)
    unloaded: SimulationResult


@dataclass(frozen=True)
class Targets:
    ttft_p95: float | None
    itl_p95: float | None
    request_overhead: float

    def met(self, sim: SimulationResult) -> bool:
        ttft_ok = self.ttft_p95 is None or sim.ttft_p95 + self.request_overhead <= self.ttft_p95
        itl_ok = self.itl_p95 is None or sim.itl_p95 <= self.itl_p95
        return ttft_ok and itl_ok


# Sized for a fleet: a thousand deploy files share a few hundred shapes, each needing about a dozen simulations;
# an evicted entry costs a simulation (milliseconds), a kept one a few hundred bytes.
@lru_cache(maxsize=16384)
def _simulate_cached(step: StepModel, limits: BatchLimits, work: Workload, rate: float | None) -> SimulationResult:
    return simulate(step, limits, work, rate)


@lru_cache(maxsize=4096)
def replica_capacity(step: StepModel, limits: BatchLimits, work: Workload, targets: Targets) -> ReplicaCapacity:
    saturated = _simulate_cached(step, limits, work, None).requests_per_second
    lowest = saturated * 0.02
    unloaded = _simulate_cached(step, limits, work, lowest)
    if targets.ttft_p95 is None and targets.itl_p95 is None:
        return ReplicaCapacity(saturated, saturated * TARGET_UTILIZATION_WITHOUT_SLO, unloaded)
    if not targets.met(unloaded):
        return ReplicaCapacity(saturated, None, unloaded)
    # Latency grows with the rate; bisect between a rate that meets the SLO and saturation.
    good, bad = lowest, saturated
    for _ in range(RATE_SEARCH_ITERATIONS):
        middle = (good + bad) / 2
        if targets.met(_simulate_cached(step, limits, work, middle)):
            good = middle
        else:
            bad = middle
    return ReplicaCapacity(saturated, good, unloaded)


def _replicas_for(rate: float, per_replica: float) -> int:
    return max(1, math.ceil(rate / per_replica - 1e-9))


# ---------------------------------------------------------------- the estimate
def estimate(deployment: Deployment, base_dir: Path | None = None) -> CapacityEstimate:
    """The capacity & cost model for one deployment. Raises InputError when the model geometry is unusable."""
    geo = geometry(deployment, base_dir)
    gpu = gpu_for(deployment, base_dir)
    args = deployment.engine.args
    weights = weights_dtype(deployment, geo)
    kv_cache_dtype = kv_dtype(deployment, activation_dtype(weights, geo))
    memory = plan_memory(deployment, geo, gpu, weights, kv_cache_dtype)
    gpus = deployment.hardware.gpus_per_replica if gpu.id != "CPU" else 1
    notes: list[str] = []
    calibration = deployment_calibration(deployment, base_dir)
    calibrated = None
    if calibration is not None:
        calibrated = f"calibrated from {calibration.path} ({calibration.engine}, {calibration.created})"
        notes.append(f"efficiency factors {calibrated}")

    traffic = deployment.traffic
    demand, rates = demand_and_rates(deployment, base_dir)
    work = demand.work if demand is not None else None
    max_concurrent = None
    if work is not None and memory.fits:
        p95_prompt = _percentile(sorted(work.prompts), 0.95) if _is_trace(deployment) else traffic.prompt_tokens.p95
        p95_output = _percentile(sorted(work.outputs), 0.95) if _is_trace(deployment) else traffic.output_tokens.p95
        per_sequence_blocks = math.ceil((p95_prompt + p95_output) / block_size(deployment)) or 1
        max_concurrent = memory.kv_blocks // per_sequence_blocks

    step = step_model(deployment, geo, gpu, weights, memory.kv_bytes_per_token)
    budget = max_batched_tokens(deployment, gpu)
    prefill_rate = None
    if memory.fits:
        # A step filled with one prompt chunk: the compute-bound side of the roofline.
        prefill_rate = budget / step.seconds(0, 0.0, budget, budget * budget / 2) / gpus

    result = CapacityEstimate(
        gpu=gpu.id, gpus_per_replica=gpus, tensor_parallel_size=args.tensor_parallel_size, weights_dtype=weights,
        kv_cache_dtype=kv_cache_dtype, weights_bytes_per_gpu=memory.weights_bytes_per_gpu,
        activation_reserve_bytes_per_gpu=memory.activation_reserve_bytes_per_gpu,
        kv_bytes_per_token=memory.kv_bytes_per_token, kv_cache_bytes_per_gpu=memory.kv_cache_bytes_per_gpu,
        kv_blocks_per_replica=memory.kv_blocks, kv_tokens_per_replica=memory.kv_tokens, fits=memory.fits,
        fit_reason=memory.fit_reason, total_params=geo.total_params, active_params=geo.active_params,
        max_concurrent_sequences=max_concurrent, max_context_tokens_fit=memory.kv_tokens,
        prefill_tokens_per_second_per_gpu=prefill_rate, decode_tokens_per_second_per_gpu=None,
        max_requests_per_second_per_replica=None, ttft_p50_seconds=None, itl_p50_seconds=None, notes=notes,
        calibration=calibrated,
    )
    if not memory.fits or work is None:
        if memory.fits:
            notes.append("traffic.prompt_tokens / output_tokens not declared: no latency, replica or cost figures")
        return result

    limits = BatchLimits(max_num_seqs(deployment, gpu), budget, memory.kv_tokens)
    slo = deployment.slo
    targets = Targets(slo.ttft_p95_seconds if slo else None, slo.itl_p95_seconds if slo else None,
                      gpu.efficiency.request_overhead_seconds)
    capacity = replica_capacity(step, limits, work, targets)
    per_replica = capacity.max_requests_per_second
    overhead = gpu.efficiency.request_overhead_seconds
    if per_replica is None and demand.process != "poisson":
        notes.append(f"one replica alone misses the SLO under the whole {demand.process} stream at any rate (its "
                     "bursts queue); split over more replicas they thin out")
        result.ttft_p50_seconds = capacity.unloaded.ttft_p50 + overhead
        result.itl_p50_seconds = capacity.unloaded.itl_p50
    elif per_replica is None:
        notes.append(f"a single request already misses the SLO: TTFT p95 {capacity.unloaded.ttft_p95 + overhead:.3f}s,"
                     f" ITL p95 {capacity.unloaded.itl_p95:.4f}s")
        result.ttft_p50_seconds = capacity.unloaded.ttft_p50 + overhead
        result.itl_p50_seconds = capacity.unloaded.itl_p50
    else:
        result.max_requests_per_second_per_replica = per_replica
        result.decode_tokens_per_second_per_gpu = per_replica * work.mean_output / gpus
        at_capacity = _simulate_cached(step, limits, work, per_replica)
        result.ttft_p50_seconds = at_capacity.ttft_p50 + overhead
        result.itl_p50_seconds = at_capacity.itl_p50
    if rates is not None:
        result.growth = [_growth_point(deployment, gpu, step, limits, demand, targets, capacity, m, gpus, rates)
                         for m in traffic.growth]
        one = next((p for p in result.growth if abs(p.multiplier - 1.0) < 1e-9), None)
        if one is not None and one.replicas_needed is not None and demand.process != "poisson":
            # Bursty traffic: what one replica sustains depends on how many share the stream; quote it at 1×.
            shared = replica_capacity(step, limits, demand.for_replicas(one.replicas_needed), targets)
            if shared.max_requests_per_second is not None:
                per_replica = shared.max_requests_per_second
                result.max_requests_per_second_per_replica = per_replica
                result.decode_tokens_per_second_per_gpu = per_replica * work.mean_output / gpus
            if demand.cv is not None:
                notes.append(f"gamma arrivals, CV {demand.cv:g}: split at random over the {one.replicas_needed} "
                             f"replicas of 1×, each sees CV {demand.per_replica_cv(one.replicas_needed):.2f}")
        if one is not None and one.replicas_needed is not None and per_replica is not None:
            sized = _simulate_cached(step, limits, demand.for_replicas(one.replicas_needed),
                                     one.requests_per_second / one.replicas_needed)
            result.ttft_p50_seconds = sized.ttft_p50 + overhead
            result.itl_p50_seconds = sized.itl_p50
        if one is not None and one.cost_per_hour is not None:
            result.spot = spot_economics(deployment, gpu, one, rates, work, result.ttft_p50_seconds,
                                         result.itl_p50_seconds, memory.weights_bytes_per_gpu, gpus)
    return result


def capacity_prices(deployment: Deployment, gpu: GPU) -> tuple[float, float]:
    """(on-demand, spot) USD per GPU-hour. A declared price is the declared capacity's (reserved counts as
    on-demand); the alternative is the catalog's list price."""
    on_demand, spot = gpu.price("on-demand"), gpu.price("spot")
    declared = deployment.hardware.price_per_gpu_hour
    if declared is None:
        return on_demand, spot
    if deployment.hardware.capacity == "spot":
        return on_demand, declared
    return declared, spot


def spot_economics(deployment: Deployment, gpu: GPU, one: GrowthPoint, rates: RateProfile, work: Workload,
                   ttft_p50: float | None, itl_p50: float | None, weights_bytes_per_gpu: float,
                   gpus: int) -> SpotEconomics | None:
    """The 1× fleet on spot vs on-demand: lost requests, re-warm and an extra spare priced in (docs/capacity.md)."""
    if one.replicas_needed is None or ttft_p50 is None or itl_p50 is None:
        return None
    interruptions = gpu.spot_interruptions_per_hour
    source = "hardware catalog (AWS Spot Instance Advisor band)"
    if interruptions is None:
        interruptions = get_gpu("H100-SXM-80GB").spot_interruptions_per_hour
        source = "no figure for this GPU: H100's AWS Spot Instance Advisor band"
    reliability = deployment.reliability
    price = price_per_gpu_hour(deployment, gpu)
    replicas = one.cost_per_hour / (price * gpus) if price else 0.0
    # Requests in flight per replica (Little's law) and how long each takes, from the simulated 1× medians.
    per_replica_rate = one.requests_per_second / one.replicas_needed
    e2e = [ttft_p50 + max(0, o - 1) * itl_p50 for o in work.outputs]
    mean_e2e = sum(e2e) / len(e2e)
    in_flight = per_replica_rate * mean_e2e
    drain = reliability is not None and reliability.spot_drain_enabled
    window = 0.0
    if drain:
        notice = reliability.spot_drain.notice_source if not isinstance(reliability.spot_drain, bool) else None
        grace = reliability.termination_grace_period_seconds
        window = min(SPOT_NOTICE_SECONDS[notice], KUBERNETES_DEFAULT_GRACE_SECONDS if grace is None else grace,
                     deployment.engine.args.shutdown_timeout or 0.0)  # vLLM's default 0 kills streams on SIGTERM
    # An in-flight request is caught at a uniformly random point of its life, longer ones more often (length-biased):
    # it is lost when what it has left exceeds the drain window.
    failure = sum(max(0.0, t - window) for t in e2e) / sum(e2e) if sum(e2e) > 0 else 0.0
    reclaims_per_day = interruptions * replicas * 24
    lost_per_day = reclaims_per_day * in_flight * failure
    served_per_day = sum(getattr(rates, level) * hours * 3600 for level, hours in DAY_PROFILE_HOURS)
    availability = deployment.slo.availability if deployment.slo and deployment.slo.availability else None
    budget = served_per_day * (1 - availability) if availability else None
    rewarm = (reliability.startup_seconds if reliability is not None and reliability.startup_seconds else
              ENGINE_START_SECONDS + weights_bytes_per_gpu / WEIGHT_LOAD_BYTES_PER_SECOND)
    on_demand_price, spot_price = capacity_prices(deployment, gpu)
    on_demand = replicas * gpus * on_demand_price
    spot_list = replicas * gpus * spot_price
    # Per reclaim: the replacement runs `rewarm` seconds before it serves, and the lost requests' work is redone
    # (on average half of each was done: in_flight · failure requests, each 1/rate replica-seconds of work, is
    # failure · mean_e2e / 2 replica-seconds by Little's law).
    overhead = interruptions * replicas * (rewarm + failure * mean_e2e / 2) / 3600 * gpus * spot_price
    spot_effective = spot_list + SPOT_EXTRA_SPARES * gpus * spot_price + overhead
    output_per_hour = served_per_day * work.mean_output / 24
    floor = _replicas_for(rates.p50, one.requests_per_second / one.replicas_needed) + 1 if rates.p50 > 0 else 1
    floor = min(floor, replicas)
    mixed = floor * gpus * on_demand_price + (replicas - floor + SPOT_EXTRA_SPARES) * gpus * spot_price + overhead * (
        (replicas - floor) / replicas if replicas else 0.0)
    return SpotEconomics(
        interruptions_per_replica_hour=interruptions, interruption_source=source, replicas=replicas,
        extra_spare_replicas=SPOT_EXTRA_SPARES, drain_window_seconds=window, drain_failure_probability=failure,
        in_flight_requests_per_replica=in_flight, rewarm_seconds=rewarm, lost_requests_per_day=lost_per_day,
        error_budget_requests_per_day=budget, on_demand_cost_per_hour=on_demand, spot_list_cost_per_hour=spot_list,
        spot_effective_cost_per_hour=spot_effective, net_savings_per_hour=on_demand - spot_effective,
        net_savings_fraction=(on_demand - spot_effective) / on_demand if on_demand else 0.0,
        on_demand_cost_per_million_output_tokens=on_demand / output_per_hour * 1e6 if output_per_hour else None,
        spot_effective_cost_per_million_output_tokens=spot_effective / output_per_hour * 1e6 if output_per_hour
        else None,
        on_demand_floor_cost_per_hour=mixed,
    )


def _shape(profile: TokenProfile) -> tuple[int, int, int]:
    return profile.p50, profile.p95, profile.max


@dataclass(frozen=True)
class Demand:
    """The fleet's requests and how one of N replicas sees them when a load balancer spreads them at random.

    A random split of a Poisson stream is Poisson at rate/N (closed form). A bursty stream dilutes: a gamma renewal
    stream with gap CV c thinned to 1/N has gap CV² = 1 + (c² − 1)/N (a geometric sum of gaps); a trace is thinned
    directly (thinned_trace_workload). Either way replica counts are searched, not divided.
    """

    work: Workload                       # the whole stream, time-scaled to 1 request/s (what one replica of 1 sees)
    process: str                         # poisson | gamma | trace
    cv: float | None = None
    shapes: tuple | None = None          # (prompt, output, hit rate, block size) for gamma workloads
    trace_key: tuple | None = None       # (path, stamp, hit rate, block size) for thinned traces

    def per_replica_cv(self, replicas: int) -> float | None:
        if self.cv is None:
            return None
        return math.sqrt(max(0.0, 1.0 + (self.cv * self.cv - 1.0) / max(1, replicas)))

    def for_replicas(self, replicas: int) -> Workload:
        if self.process == "poisson" or replicas <= 1:
            return self.work
        if self.process == "gamma":
            # Rounded so that nearby replica counts share one cached workload and its simulations.
            return make_workload(*self.shapes, round(self.per_replica_cv(replicas), 2))
        return thinned_trace_workload(*self.trace_key, replicas)


MAX_SEARCHED_REPLICAS = 1 << 17


def replicas_for_rate(step: StepModel, limits: BatchLimits, demand: Demand, targets: Targets,
                      capacity: ReplicaCapacity, rate: float,
                      with_result: bool = True) -> tuple[int, SimulationResult | None] | None:
    """The fewest replicas whose share of `rate` meets the SLO, and the simulation of one of them (None: no count).

    Poisson: ⌈rate / per-replica capacity⌉. Bursty: the smallest N with sim(rate/N, what one of N sees) within the
    SLO, by doubling then bisection — at least ⌈rate / saturated throughput⌉, at most what N=1's capacity gives.
    """
    if demand.process == "poisson":
        if capacity.max_requests_per_second is None:
            return None
        needed = _replicas_for(rate, capacity.max_requests_per_second)
        # Counting alone is arithmetic: the day profile asks for counts at four rates per multiplier.
        return needed, _simulate_cached(step, limits, demand.work, rate / needed) if with_result else None

    def attempt(n: int) -> SimulationResult:
        return _simulate_cached(step, limits, demand.for_replicas(n), rate / n)

    low = _replicas_for(rate, capacity.saturated_requests_per_second)
    high = _replicas_for(rate, capacity.max_requests_per_second) if capacity.max_requests_per_second else low
    high = max(high, low)
    result = attempt(high)
    while not targets.met(result):
        low = high + 1
        high *= 2
        if high > MAX_SEARCHED_REPLICAS:
            return None
        result = attempt(high)
    while low < high:
        middle = (low + high) // 2
        trial = attempt(middle)
        if targets.met(trial):
            high, result = middle, trial
        else:
            low = middle + 1
    return high, result


def effective_prefix_hit_rate(deployment: Deployment) -> float:
    """The declared hit rate, or 0 with prefix caching switched off (vLLM V1 has it on unless told otherwise)."""
    if deployment.traffic is None or deployment.engine.args.enable_prefix_caching is False:
        return 0.0
    return deployment.traffic.prefix_cache_hit_rate or 0.0


HOURS_PER_MONTH = 730


def monthly_cost(plan: CapacityEstimate | None, multiplier: float = 1.0) -> float | None:
    """USD per month of the plan's fleet at a growth multiplier (None when the plan has no cost for it)."""
    if plan is None:
        return None
    point = next((p for p in plan.growth if abs(p.multiplier - multiplier) < 1e-9), None)
    return point.cost_per_hour * HOURS_PER_MONTH if point is not None and point.cost_per_hour is not None else None


def what_if(deployment: Deployment, base_dir: Path | None, changes: dict[str, Any]) -> CapacityEstimate | None:
    """The plan re-run with deploy.yaml values changed (dotted paths → new values); None when the changed file is
    invalid or unplannable. For the cost delta of a recommendation: what the fix saves or costs."""
    raw = deployment.model_dump(mode="json", exclude_none=True, by_alias=True)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return estimate(Deployment.model_validate(raw), base_dir)
    except (InputError, ValueError):
        return None


def cost_delta(deployment: Deployment, base_dir: Path | None, plan: CapacityEstimate | None,
               changes: dict[str, Any], multiplier: float = 1.0) -> float | None:
    """USD per month a change to deploy.yaml adds (negative: saves) at a growth multiplier, by re-running the model."""
    before = monthly_cost(plan, multiplier)
    if deployment.traffic is not None and "traffic.growth" not in changes:
        # Only the multiplier priced is re-planned: the other growth points would cost simulations nobody reads.
        changes = {**changes, "traffic.growth": [multiplier]}
    after = monthly_cost(what_if(deployment, base_dir, changes), multiplier)
    return None if before is None or after is None else after - before


def describe_delta(delta: float | None) -> str:
    """'saves $1,234/month' / 'costs $1,234/month more' / '' (for a finding's message)."""
    if delta is None:
        return ""
    if abs(delta) < 0.5:
        return "costs the same per month"
    return f"saves ${-delta:,.0f}/month" if delta < 0 else f"costs ${delta:,.0f}/month more"


def _is_trace(deployment: Deployment) -> bool:
    arrival = deployment.traffic.arrival if deployment.traffic else None
    return arrival is not None and arrival.process == "trace"


def demand_and_rates(deployment: Deployment, base_dir: Path | None) -> tuple[Demand | None, RateProfile | None]:
    """The simulated requests (lengths and unit-rate arrivals) and the rates to size for, from traffic.

    Poisson unless traffic.arrival says gamma (CV) or trace. A trace brings its own lengths and gaps; without
    declared requests_per_second its mean rate is taken for p50, p95 and peak.
    """
    traffic = deployment.traffic
    if traffic is None:
        return None, None
    hit_rate = effective_prefix_hit_rate(deployment)
    arrival = traffic.arrival
    rates = traffic.requests_per_second
    if arrival is not None and arrival.process == "trace":
        path = Path(arrival.trace)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        if not path.is_file():
            raise InputError(f"traffic.arrival.trace: {path} is not a file — give an Azure LLM trace CSV "
                             "(TIMESTAMP,ContextTokens,GeneratedTokens) or a Forge trace JSONL, relative to the "
                             "deploy file")
        stat = path.stat()
        work, mean_rate = trace_workload(str(path), (stat.st_mtime, stat.st_size), hit_rate, block_size(deployment))
        if rates is None:
            rates = RateProfile(p50=mean_rate, p95=mean_rate, peak=mean_rate)
        key = (str(path), (stat.st_mtime, stat.st_size), hit_rate, block_size(deployment))
        return Demand(work, "trace", trace_key=key), rates
    if traffic.prompt_tokens is None or traffic.output_tokens is None:
        return None, rates
    shapes = (_shape(traffic.prompt_tokens), _shape(traffic.output_tokens), hit_rate, block_size(deployment))
    if arrival is not None and arrival.process == "gamma":
        return Demand(make_workload(*shapes, arrival.cv), "gamma", cv=arrival.cv, shapes=shapes), rates
    return Demand(make_workload(*shapes), "poisson"), rates


def replica_step_model(deployment: Deployment, base_dir: Path | None = None) -> StepModel:
    """The per-step roofline of one replica of this deployment (for what-if questions and tests)."""
    geo = geometry(deployment, base_dir)
    gpu = gpu_for(deployment, base_dir)
    weights = weights_dtype(deployment, geo)
    kv_cache_dtype = kv_dtype(deployment, activation_dtype(weights, geo))
    kv_per_token = kv_bytes_per_token_per_gpu(geo, kv_cache_dtype, deployment.engine.args.tensor_parallel_size,
                                              deployment.engine.args.pipeline_parallel_size)
    return step_model(deployment, geo, gpu, weights, kv_per_token)


def price_per_gpu_hour(deployment: Deployment, gpu: GPU) -> float:
    return deployment.hardware.price_per_gpu_hour if deployment.hardware.price_per_gpu_hour is not None \
        else gpu.price(deployment.hardware.capacity)


def _growth_point(deployment: Deployment, gpu: GPU, step: StepModel, limits: BatchLimits, demand: Demand,
                  targets: Targets, capacity: ReplicaCapacity, multiplier: float, gpus: int,
                  rates: RateProfile) -> GrowthPoint:
    work = demand.work
    sizing_rate = rates.p95 * multiplier
    sized = replicas_for_rate(step, limits, demand, targets, capacity, sizing_rate) if sizing_rate > 0 else None
    if sized is None:
        return GrowthPoint(multiplier, sizing_rate, None, None, None, None, None, None, None, None, None, None)
    needed, sim = sized

    def replicas(rate: float) -> int:
        if rate <= 0:
            return 0
        found = replicas_for_rate(step, limits, demand, targets, capacity, rate, with_result=False)
        return found[0] if found is not None else needed

    overhead = gpu.efficiency.request_overhead_seconds
    burst_rate = min(rates.peak, rates.p95 * (1 + BURST_HEADROOM)) * multiplier
    with_headroom = max(needed, replicas(burst_rate)) + 1
    utilization = sizing_rate / (needed * capacity.saturated_requests_per_second)

    # A day at p50 / p95 / peak: the floor (declared replicas.min at 1×, else the headroom figure) stays up and
    # the autoscaler adds replicas (+1 spare) when a level needs more. Needed: the replicas that meet the SLO at
    # each level, without spares.
    declared_floor = deployment.hardware.replicas.min if deployment.hardware.replicas else 0
    floor = max(with_headroom, declared_floor if abs(multiplier - 1.0) < 1e-9 else 0)
    provisioned_hours = needed_hours = 0.0
    served_requests = 0.0
    for level, hours in DAY_PROFILE_HOURS:
        rate = getattr(rates, level) * multiplier
        level_needed = replicas(rate)
        provisioned_hours += hours * max(floor, level_needed + 1 if rate > 0 else 0) * gpus
        needed_hours += hours * level_needed * gpus
        served_requests += hours * 3600 * rate
    price = price_per_gpu_hour(deployment, gpu)
    cost_per_day = provisioned_hours * price
    cost_per_hour = cost_per_day / 24
    output_share = _output_cost_share(step, limits, work)
    availability = deployment.slo.availability if deployment.slo and deployment.slo.availability else 1.0
    input_tokens = served_requests * work.mean_prompt
    output_tokens = served_requests * work.mean_output
    return GrowthPoint(
        multiplier=multiplier, requests_per_second=sizing_rate, replicas_needed=needed,
        replicas_with_headroom=with_headroom, ttft_p95_seconds=sim.ttft_p95 + overhead, itl_p95_seconds=sim.itl_p95,
        utilization=utilization, cost_per_hour=cost_per_hour,
        cost_per_million_output_tokens=cost_per_day * output_share / output_tokens * 1e6 if output_tokens else None,
        cost_per_million_input_tokens=cost_per_day * (1 - output_share) / input_tokens * 1e6 if input_tokens else None,
        cost_per_successful_request=cost_per_day / (served_requests * availability) if served_requests else None,
        idle_gpu_hours_per_day=max(0.0, provisioned_hours - needed_hours),
    )


def _output_cost_share(step: StepModel, limits: BatchLimits, work: Workload) -> float:
    """Share of GPU time spent generating (vs prefilling), to split cost between output and input tokens."""
    batch = max(1, min(limits.max_num_seqs, limits.kv_tokens // max(1, int(work.mean_prompt + work.mean_output))))
    context = work.mean_prompt + work.mean_output / 2
    decode_step = step.seconds(batch, batch * context, 0.0, 0.0)
    decode_seconds = work.mean_output / step.output_tokens_per_decode_step * decode_step / batch
    chunk = float(limits.max_batched_tokens)
    prefill_seconds = work.mean_computed_prompt / chunk * step.seconds(0, 0.0, chunk, chunk * chunk / 2)
    return decode_seconds / (decode_seconds + prefill_seconds)


# ---------------------------------------------------------------- latency vs load (for the HTML plan)
def latency_curve(deployment: Deployment, base_dir: Path | None = None, points: int = 12) -> list[dict[str, float]]:
    """TTFT and ITL p50/p95 of one replica (as one of the 1× fleet sees its share) from light load to saturation.

    Each point also carries its concurrency: requests in flight by Little's law (rate × mean end-to-end time).
    Empty when the model has no traffic shape or does not fit.
    """
    geo = geometry(deployment, base_dir)
    gpu = gpu_for(deployment, base_dir)
    weights = weights_dtype(deployment, geo)
    memory = plan_memory(deployment, geo, gpu, weights, kv_dtype(deployment, activation_dtype(weights, geo)))
    demand, _ = demand_and_rates(deployment, base_dir)
    if demand is None or not memory.fits:
        return []
    plan = estimate(deployment, base_dir)
    one = next((p for p in plan.growth if abs(p.multiplier - 1.0) < 1e-9), None)
    work = demand.for_replicas(one.replicas_needed if one is not None and one.replicas_needed else 1)
    step = step_model(deployment, geo, gpu, weights, memory.kv_bytes_per_token)
    limits = BatchLimits(max_num_seqs(deployment, gpu), max_batched_tokens(deployment, gpu), memory.kv_tokens)
    saturated = _simulate_cached(step, limits, work, None).requests_per_second
    overhead = gpu.efficiency.request_overhead_seconds
    curve = []
    for i in range(1, points + 1):
        rate = saturated * i / points
        sim = _simulate_cached(step, limits, work, rate)
        e2e = sim.ttft_p50 + overhead + max(0.0, work.mean_output - 1) * sim.itl_p50
        curve.append({"requests_per_second": rate, "concurrency": rate * e2e,
                      "ttft_p50_seconds": sim.ttft_p50 + overhead, "ttft_p95_seconds": sim.ttft_p95 + overhead,
                      "itl_p50_seconds": sim.itl_p50, "itl_p95_seconds": sim.itl_p95})
    return curve


# ---------------------------------------------------------------- calibration against a measured run
CALIBRATION_TOLERANCE = 0.25   # issue 4: predictions within ±25 % of measured TTFT p50, ITL p50 and throughput
CALIBRATION_FORMAT = "forge.capacity.calibration/v1"
CALIBRATION_FIT_FORMAT = "forge.capacity.calibration-fit/v1"
GRADED_METRICS = ("ttft_p50_seconds", "itl_p50_seconds", "output_tokens_per_second")


def _median(values: list[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def gpu_for(deployment: Deployment, base_dir: Path | None = None) -> GPU:
    """The catalog GPU of deploy.yaml, with `hardware.calibration`'s fitted efficiency factors when it names a file."""
    gpu = get_gpu(deployment.hardware.gpu)
    calibration = deployment_calibration(deployment, base_dir)
    return gpu if calibration is None else replace(gpu, efficiency=calibration.efficiency)


def deployment_calibration(deployment: Deployment, base_dir: Path | None = None) -> Calibration | None:
    """hardware.calibration read and checked (relative to the deploy file); None when not set."""
    declared = deployment.hardware.calibration
    if not declared:
        return None
    path = Path(declared).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    stamp = (path.stat().st_mtime, path.stat().st_size) if path.is_file() else None
    calibration = _load_calibration_cached(str(path), stamp)
    if calibration.gpu != deployment.hardware.gpu:
        raise InputError(f"hardware.calibration {path}: fitted on {calibration.gpu}, but hardware.gpu is "
                         f"{deployment.hardware.gpu} — calibrate on this GPU or drop hardware.calibration")
    return calibration


@lru_cache(maxsize=64)
def _load_calibration_cached(path: str, stamp: tuple[float, int] | None) -> Calibration:
    return load_calibration(Path(path))


@dataclass(frozen=True)
class Replay:
    """One measured run (a `forge load run` results.jsonl) as the model replays it: the same send times and lengths."""

    work: Workload
    measured: dict[str, float | None]
    conditions: dict[str, Any]


def replay(deployment: Deployment, records: list[dict], base_dir: Path | None = None,
           prefix_hit_rate: float | None = None) -> Replay:
    """The measured medians of a run and the workload that replays it. `prefix_hit_rate`: the run's own (None: the
    deploy file's; `forge load run` prompts are distinct random words, so 0 unless it was given shared prefixes)."""
    from forge.load.metrics import tpot

    ok = sorted((r for r in records if r.get("outcome") == "ok" and r.get("sent_s") is not None
                 and r.get("tokens_out")), key=lambda r: r["sent_s"])
    if len(ok) < 2:
        raise InputError(f"the results hold {len(ok)} successful request(s) — calibration needs at least two; run "
                         "a longer load (forge load run --duration)")
    start = ok[0]["sent_s"]
    hit_rate = effective_prefix_hit_rate(deployment) if prefix_hit_rate is None else prefix_hit_rate
    work = _workload([max(1, int(r.get("tokens_in") or r.get("prompt_tokens_target") or 1)) for r in ok],
                     [max(1, int(r["tokens_out"])) for r in ok], [r["sent_s"] - start for r in ok], hit_rate,
                     block_size(deployment))
    ttfts = sorted(r["ttft_s"] for r in ok if r.get("ttft_s") is not None)
    gaps = sorted(t for t in (tpot(r) for r in ok) if t is not None)
    window = max(r["sent_s"] + (r.get("e2e_s") or 0.0) for r in ok) - start
    measured = {
        "ttft_p50_seconds": _median(ttfts), "ttft_p95_seconds": _percentile(ttfts, 0.95) if ttfts else None,
        "itl_p50_seconds": _median(gaps), "itl_p95_seconds": _percentile(gaps, 0.95) if gaps else None,
        "output_tokens_per_second": sum(r["tokens_out"] for r in ok) / window if window > 0 else None,
    }
    conditions = {"requests_ok": len(ok), "requests_recorded": len(records),
                  "offered_requests_per_second": _rounded((len(ok) - 1) / (ok[-1]["sent_s"] - start))
                  if ok[-1]["sent_s"] > start else None,
                  "window_seconds": _rounded(window),
                  "prompt_tokens_mean": _rounded(work.mean_prompt), "output_tokens_mean": _rounded(work.mean_output)}
    return Replay(work, measured, conditions)


class _ReplayModel:
    """Predicts replays with any efficiency factors: the deployment's geometry, memory and limits computed once."""

    def __init__(self, deployment: Deployment, base_dir: Path | None, gpu: GPU):
        self.deployment, self.gpu = deployment, gpu
        self.geo = geometry(deployment, base_dir)
        self.weights = weights_dtype(deployment, self.geo)
        memory = plan_memory(deployment, self.geo, gpu, self.weights,
                             kv_dtype(deployment, activation_dtype(self.weights, self.geo)))
        if not memory.fits:
            raise InputError(f"the model does not fit ({memory.fit_reason}) — fix deploy.yaml before calibrating")
        self.kv_bytes_per_token = memory.kv_bytes_per_token
        self.limits = BatchLimits(max_num_seqs(deployment, gpu), max_batched_tokens(deployment, gpu), memory.kv_tokens)
        self.precision = compute_dtype(self.weights, gpu)

    def predict(self, run: Replay, efficiency: Efficiency) -> dict[str, float]:
        gpu = replace(self.gpu, efficiency=efficiency)
        step = step_model(self.deployment, self.geo, gpu, self.weights, self.kv_bytes_per_token)
        sim = simulate(step, self.limits, run.work, 1.0, warmup=0, details=True)
        overhead = efficiency.request_overhead_seconds
        # Throughput as the client measures it: output tokens over first send → last completion (its overhead too).
        window = max(sim.request_finish) + overhead
        return {
            "ttft_p50_seconds": sim.ttft_p50 + overhead, "ttft_p95_seconds": sim.ttft_p95 + overhead,
            "itl_p50_seconds": sim.tpot_p50, "itl_p95_seconds": sim.tpot_p95,
            "output_tokens_per_second": sum(run.work.outputs) / window if window > 0 else 0.0,
        }


def _rows(predicted: dict[str, float], measured: dict[str, float | None]) -> list[dict[str, Any]]:
    rows = []
    for metric, value in measured.items():
        guess = predicted[metric]
        error = (guess - value) / value if value else None
        rows.append({"metric": metric, "predicted": _rounded(guess), "measured": _rounded(value),
                     "error_pct": None if error is None else round(100 * error, 1),
                     # The acceptance covers medians and throughput; p95s are shown beside them, not graded.
                     "within_tolerance": None if error is None or metric not in GRADED_METRICS
                     else abs(error) <= CALIBRATION_TOLERANCE})
    return rows


def _report(gpu: GPU, run: Replay, predicted: dict[str, float], calibration: Calibration | None) -> dict[str, Any]:
    rows = _rows(predicted, run.measured)
    return {
        "format": CALIBRATION_FORMAT, "tolerance_pct": 100 * CALIBRATION_TOLERANCE,
        "conditions": {"gpu": gpu.id, **run.conditions},
        "efficiency": {"source": str(calibration.path) if calibration else "hardware catalog",
                       **gpu.efficiency.to_dict()},
        "rows": rows,
        "all_within_tolerance": all(r["within_tolerance"] for r in rows if r["within_tolerance"] is not None),
    }


def calibrate(deployment: Deployment, records: list[dict], base_dir: Path | None = None,
              prefix_hit_rate: float | None = None) -> dict[str, Any]:
    """Predicted vs measured for the load a `forge load run` results.jsonl records.

    The model replays the very requests that were measured — their send times and their prompt and output token
    counts — through one replica's simulation (no warm-up discarded: the measured run has none either), with the
    deployment's efficiency factors (hardware.calibration's when set), and compares medians and throughput with the
    measurement. Definitions follow docs/load.md: TTFT send → first token; output throughput = output tokens /
    (first send → last completion). ITL is compared as TPOT per request, (E2E − TTFT) / (tokens − 1), on both sides:
    a streamed client sees events coalesced on a busy host (on real vLLM CPU the pooled gaps' p50 measured
    42–72 µs, TPOT ~6 ms), so the model's per-request TPOT is compared with the measured one.
    """
    gpu = gpu_for(deployment, base_dir)
    model = _ReplayModel(deployment, base_dir, gpu)
    run = replay(deployment, records, base_dir, prefix_hit_rate)
    return _report(gpu, run, model.predict(run, gpu.efficiency), deployment_calibration(deployment, base_dir))


# The fitted factors, in log space: compute efficiency (per prompt and decode token: FLOPs / (peak · share)), memory
# bandwidth efficiency (weights + KV read per step), step overhead, per-sequence overhead, request overhead.
FIT_PARAMETERS = ("compute", "memory_bandwidth", "step_overhead_seconds", "sequence_overhead_seconds",
                  "request_overhead_seconds")
FIT_OVERHEAD_FLOOR_SECONDS = 1e-7     # an overhead fitted below this is zero
FIT_SEQUENCE_OVERHEAD_START = 1e-4    # the catalog has none: start the search at 0.1 ms per sequence
FIT_LOSS_SCALE = 0.10                 # soft-L1: residuals (log ratio) beyond ~10 % count linearly, not squared
FIT_PRIOR_WEIGHT = 1e-3               # pulls factors the runs can't see back to the catalog's (identifiability)
FIT_MAX_EVALUATIONS = 600
FIT_RESTART_STEPS = (1.0, 0.5, 0.25, 0.1, 0.05)  # initial simplex size (log space) of each restart


def _soft_l1(residual: float) -> float:
    z = residual / FIT_LOSS_SCALE
    return 2.0 * (math.sqrt(1.0 + z * z) - 1.0)


def _nelder_mead(f, x0: list[float], step: float, max_evaluations: int) -> tuple[list[float], float, int]:
    """Minimise f from x0 (Nelder & Mead 1965, standard coefficients): robust to the simulation's small steps and
    plateaus where gradients are not. Returns (best x, f(best), evaluations)."""
    n = len(x0)
    simplex = [list(x0)] + [[x + (step if i == j else 0.0) for j, x in enumerate(x0)] for i in range(n)]
    values = [f(x) for x in simplex]
    evaluations = n + 1
    while evaluations < max_evaluations:
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] <= 1e-10 * (1.0 + abs(values[0])) and \
                max(abs(a - b) for v in simplex[1:] for a, b in zip(v, simplex[0])) < 1e-6:
            break
        centroid = [sum(v[j] for v in simplex[:-1]) / n for j in range(n)]
        worst = simplex[-1]

        def towards(scale: float) -> list[float]:
            return [c + scale * (w - c) for c, w in zip(centroid, worst)]

        reflected = towards(-1.0)
        fr = f(reflected)
        evaluations += 1
        if fr < values[0]:
            expanded = towards(-2.0)
            fe = f(expanded)
            evaluations += 1
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = towards(0.5 if fr >= values[-1] else -0.5)
            fc = f(contracted)
            evaluations += 1
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best
                best = simplex[0]
                simplex = [best] + [[b + 0.5 * (x - b) for b, x in zip(best, v)] for v in simplex[1:]]
                values = [values[0]] + [f(v) for v in simplex[1:]]
                evaluations += n
    best = min(range(n + 1), key=values.__getitem__)
    return simplex[best], values[best], evaluations


def fit_efficiency(deployment: Deployment, runs: list[list[dict]], base_dir: Path | None = None,
                   prefix_hit_rate: float | None = 0.0, start: Efficiency | None = None) -> dict[str, Any]:
    """Fit the step roofline's efficiency factors and overheads to measured runs (several traffic shapes).

    Each run is replayed through the simulation (same send times and lengths); the loss is a robust (soft-L1) sum of
    log(predicted / measured) over TTFT p50, ITL (TPOT) p50 and output throughput of every run, plus a weak pull
    towards the catalog's factors so that a factor the runs cannot see stays where it was. Efficiencies stay shares
    of the datasheet (≤ 1), overheads ≥ 0: the fit moves the roofline's own knobs, it adds no other model.
    Returns the fitted Efficiency, per-run reports before and after, and the fit's figures.
    """
    gpu = get_gpu(deployment.hardware.gpu)
    start = start or gpu.efficiency
    model = _ReplayModel(deployment, base_dir, gpu)
    replays = [replay(deployment, records, base_dir, prefix_hit_rate) for records in runs]
    precision = model.precision
    first = [start.compute.get(precision, start.compute["bf16"]), start.memory_bandwidth,
             start.step_overhead_seconds, start.sequence_overhead_seconds or FIT_SEQUENCE_OVERHEAD_START,
             start.request_overhead_seconds]
    x0 = [math.log(max(v, FIT_OVERHEAD_FLOOR_SECONDS)) for v in first]

    def factors(x: list[float]) -> Efficiency:
        shares = [min(1.0, math.exp(v)) for v in x[:2]]
        overheads = [math.exp(v) if math.exp(v) >= FIT_OVERHEAD_FLOOR_SECONDS else 0.0 for v in x[2:]]
        return replace(start, compute={**start.compute, precision: shares[0]}, memory_bandwidth=shares[1],
                       step_overhead_seconds=overheads[0], sequence_overhead_seconds=overheads[1],
                       request_overhead_seconds=overheads[2])

    def loss(x: list[float]) -> float:
        efficiency = factors(x)
        total = 0.0
        for run in replays:
            predicted = model.predict(run, efficiency)
            for metric in GRADED_METRICS:
                measured = run.measured[metric]
                if measured and predicted[metric] > 0:
                    total += _soft_l1(math.log(predicted[metric] / measured))
                elif measured:
                    total += _soft_l1(10.0)
        # Shares above 1 are clamped: push the search back from the flat region beyond them.
        total += sum(max(0.0, v) ** 2 for v in x[:2])
        return total + FIT_PRIOR_WEIGHT * sum((a - b) ** 2 for a, b in zip(x, x0))

    # Medians of a few dozen requests move in small steps as the factors change: a simplex can stall on such a
    # plateau, so the search restarts from its best point with a fresh, smaller simplex.
    best, best_loss, evaluations = x0, loss(x0), 1
    for step in FIT_RESTART_STEPS:
        found, value, used = _nelder_mead(loss, best, step, FIT_MAX_EVALUATIONS)
        evaluations += used
        if value < best_loss:
            best, best_loss = found, value
    fitted = factors(best)
    before = [_report(gpu, run, model.predict(run, gpu.efficiency), None) for run in replays]
    fitted_gpu = replace(gpu, efficiency=fitted)
    after = [_report(fitted_gpu, run, model.predict(run, fitted), None) for run in replays]
    errors = [abs(r["error_pct"]) for report in after for r in report["rows"]
              if r["metric"] in GRADED_METRICS and r["error_pct"] is not None]
    return {"efficiency": fitted, "catalog": gpu.efficiency, "before": before, "after": after,
            "loss": best_loss, "evaluations": evaluations, "precision": precision,
            "max_abs_error_pct": max(errors) if errors else None,
            "rms_error_pct": math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else None}


def calibration_document(deployment: Deployment, fit: dict[str, Any], sources: list[str], engine: str | None,
                         created: str, host_load: tuple[float, float, float] | None) -> dict[str, Any]:
    """What `forge capacity calibrate --save FILE` writes: the fitted factors and where they come from."""
    name, _, version = (engine or f"{deployment.engine.name} {deployment.engine.version or ''}").partition(" ")
    runs = []
    for source, before, after in zip(sources, fit["before"], fit["after"]):
        runs.append({
            "source": source, **{k: before["conditions"][k] for k in (
                "requests_ok", "offered_requests_per_second", "window_seconds", "prompt_tokens_mean",
                "output_tokens_mean")},
            "measured": {r["metric"]: r["measured"] for r in after["rows"] if r["metric"] in GRADED_METRICS},
            "error_pct_catalog": {r["metric"]: r["error_pct"] for r in before["rows"] if r["metric"] in GRADED_METRICS},
            "error_pct_fitted": {r["metric"]: r["error_pct"] for r in after["rows"] if r["metric"] in GRADED_METRICS},
        })
    efficiency = fit["efficiency"].to_dict()
    efficiency["compute"] = {fit["precision"]: _rounded(efficiency["compute"][fit["precision"]])}
    return {
        "format": CALIBRATION_FILE_FORMAT,
        "gpu": deployment.hardware.gpu,
        "engine": {"name": name, "version": version.strip() or None},
        "model": deployment.model.name,
        "created": created,
        "efficiency": {k: _rounded(v) if isinstance(v, float) else v for k, v in efficiency.items()},
        "fit": {
            "method": "Nelder-Mead in log space over replayed simulations; soft-L1 loss on log(predicted/measured) "
                      "of TTFT p50, ITL (TPOT) p50 and output throughput per run",
            "loss": _rounded(fit["loss"]), "evaluations": fit["evaluations"],
            "max_abs_error_pct": fit["max_abs_error_pct"] and round(fit["max_abs_error_pct"], 1),
            "rms_error_pct": fit["rms_error_pct"] and round(fit["rms_error_pct"], 1),
            "host_load_average": list(host_load) if host_load else None,
            "catalog_efficiency": {k: _rounded(v) if isinstance(v, float) else v
                                   for k, v in fit["catalog"].to_dict().items()},
            "runs": runs,
        },
    }


__all__ = ["CapacityEstimate", "GrowthPoint", "StepModel", "calibrate", "estimate", "fit_efficiency", "gpu_for",
           "replica_step_model"]
