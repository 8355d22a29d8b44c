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
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from forge.hardware import GPU, get as get_gpu
from forge.models import ModelGeometry, dtype_bytes, geometry, layers_per_stage
from forge.schema import Deployment, TokenProfile

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

    def to_dict(self) -> dict[str, Any]:
        out = {k: _rounded(v) for k, v in asdict(self).items() if k != "growth"}
        out["growth"] = [p.to_dict() for p in self.growth]
        return out


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
        return (roofline + collectives + self.overhead_seconds) * self.pipeline_stages


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


@lru_cache(maxsize=1024)
def make_workload(prompt: tuple[int, int, int], output: tuple[int, int, int], prefix_hit_rate: float, block_size: int) -> Workload:
    rng = random.Random(SIMULATION_SEED)
    n = SIMULATED_REQUESTS
    prompts = _lengths(rng, prompt, n)
    outputs = [max(1, o) for o in _lengths(rng, output, n)]
    # Prefix-cache hits are whole blocks, and vLLM always recomputes at least the last prompt token.
    computed = [max(1, p - (int(p * prefix_hit_rate) // block_size) * block_size) for p in prompts]
    kv = [math.ceil((p + o) / block_size) * block_size for p, o in zip(prompts, outputs)]
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(1.0)
        arrivals.append(t)
    return Workload(tuple(prompts), tuple(computed), tuple(outputs), tuple(kv), tuple(arrivals))


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


def simulate(step: StepModel, limits: BatchLimits, work: Workload, rate: float | None) -> SimulationResult:
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
    stages = step.pipeline_stages
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
    warm_time = arrivals[WARMUP_REQUESTS if WARMUP_REQUESTS < n - 1 else n - 1]

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
        budget = max_batched - batch * fed
        if prefilling and budget > 0:
            chunk = float(budget)
            if pending_prefill < chunk:
                chunk = pending_prefill
        else:
            chunk = 0.0
        if prefilling and batch == 0 and chunk <= 0:
            chunk = float(max_batched)
            if pending_prefill < chunk:
                chunk = pending_prefill
        head = prefilling[0] if prefilling else None
        chunk_context = chunk * (head[2] + chunk / 2) if chunk and head else 0.0

        # StepModel.seconds(batch, context_sum, chunk, chunk_context), inlined.
        tokens = batch * fed + chunk
        flops = (matmul * tokens
                 + attention * (context_sum * fed + chunk_context)
                 + lm_head * (batch + (1 if chunk else 0)))
        weight_bytes = dense_bytes
        if expert_bytes:
            touched = 1.0 - expert_miss ** tokens
            weight_bytes += expert_bytes * touched
        memory_bytes = weight_bytes + kv_per_token * context_sum
        compute_time = flops / peak
        memory_time = memory_bytes / bandwidth
        roofline = memory_time if memory_time > compute_time else compute_time
        collectives = allreduces * (collective_latency + allreduce_bytes * tokens / link)
        dt = (roofline + collectives + step_overhead) * stages

        k = MAX_STEPS_PER_EVENT
        if chunk and head is not None:
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
        t += k * dt
        busy += k * dt
        steps_done += k

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

    measured = range(min(WARMUP_REQUESTS, n - 1), n)
    ttfts = sorted(ttft[i] for i in measured)
    span = max(finished_at) - (arrivals[measured[0]] if rate else 0.0)
    completed = len(measured)
    out_tokens = sum(outputs[i] for i in measured)
    itl_p50, itl_p95 = _weighted_percentiles(itl, (0.50, 0.95))
    return SimulationResult(
        ttft_p50=_percentile(ttfts, 0.50), ttft_p95=_percentile(ttfts, 0.95),
        itl_p50=itl_p50, itl_p95=itl_p95,
        requests_per_second=completed / span if span > 0 else 0.0,
        output_tokens_per_second=out_tokens / span if span > 0 else 0.0,
        busy_fraction=min(1.0, busy / t) if t > 0 else 0.0,
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
    gpu = get_gpu(deployment.hardware.gpu)
    args = deployment.engine.args
    weights = weights_dtype(deployment, geo)
    kv_cache_dtype = kv_dtype(deployment, activation_dtype(weights, geo))
    memory = plan_memory(deployment, geo, gpu, weights, kv_cache_dtype)
    gpus = deployment.hardware.gpus_per_replica if gpu.id != "CPU" else 1
    notes: list[str] = []

    traffic = deployment.traffic
    prompt = traffic.prompt_tokens if traffic else None
    output = traffic.output_tokens if traffic else None
    max_concurrent = None
    if prompt is not None and output is not None and memory.fits:
        per_sequence_blocks = math.ceil((prompt.p95 + output.p95) / block_size(deployment)) or 1
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
    )
    if not memory.fits or prompt is None or output is None:
        if memory.fits:
            notes.append("traffic.prompt_tokens / output_tokens not declared: no latency, replica or cost figures")
        return result

    work = make_workload(_shape(prompt), _shape(output), traffic.prefix_cache_hit_rate or 0.0, block_size(deployment))
    limits = BatchLimits(max_num_seqs(deployment, gpu), budget, memory.kv_tokens)
    slo = deployment.slo
    targets = Targets(slo.ttft_p95_seconds if slo else None, slo.itl_p95_seconds if slo else None,
                      gpu.efficiency.request_overhead_seconds)
    capacity = replica_capacity(step, limits, work, targets)
    per_replica = capacity.max_requests_per_second
    overhead = gpu.efficiency.request_overhead_seconds
    if per_replica is None:
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
    if traffic.requests_per_second is not None:
        result.growth = [_growth_point(deployment, gpu, step, limits, work, capacity, m, gpus)
                         for m in traffic.growth]
        one = next((p for p in result.growth if abs(p.multiplier - 1.0) < 1e-9), None)
        if one is not None and one.replicas_needed is not None and per_replica is not None:
            sized = _simulate_cached(step, limits, work, one.requests_per_second / one.replicas_needed)
            result.ttft_p50_seconds = sized.ttft_p50 + overhead
            result.itl_p50_seconds = sized.itl_p50
    return result


def _shape(profile: TokenProfile) -> tuple[int, int, int]:
    return profile.p50, profile.p95, profile.max


def replica_step_model(deployment: Deployment, base_dir: Path | None = None) -> StepModel:
    """The per-step roofline of one replica of this deployment (for what-if questions and tests)."""
    geo = geometry(deployment, base_dir)
    gpu = get_gpu(deployment.hardware.gpu)
    weights = weights_dtype(deployment, geo)
    kv_cache_dtype = kv_dtype(deployment, activation_dtype(weights, geo))
    kv_per_token = kv_bytes_per_token_per_gpu(geo, kv_cache_dtype, deployment.engine.args.tensor_parallel_size,
                                              deployment.engine.args.pipeline_parallel_size)
    return step_model(deployment, geo, gpu, weights, kv_per_token)


def price_per_gpu_hour(deployment: Deployment, gpu: GPU) -> float:
    return deployment.hardware.price_per_gpu_hour if deployment.hardware.price_per_gpu_hour is not None \
        else gpu.price(deployment.hardware.capacity)


def _growth_point(deployment: Deployment, gpu: GPU, step: StepModel, limits: BatchLimits, work: Workload,
                  capacity: ReplicaCapacity, multiplier: float, gpus: int) -> GrowthPoint:
    rates = deployment.traffic.requests_per_second
    sizing_rate = rates.p95 * multiplier
    per_replica = capacity.max_requests_per_second
    if per_replica is None or sizing_rate <= 0:
        return GrowthPoint(multiplier, sizing_rate, None, None, None, None, None, None, None, None, None, None)
    needed = _replicas_for(sizing_rate, per_replica)
    sim = _simulate_cached(step, limits, work, sizing_rate / needed)
    overhead = gpu.efficiency.request_overhead_seconds
    burst_rate = min(rates.peak, rates.p95 * (1 + BURST_HEADROOM)) * multiplier
    with_headroom = max(needed, _replicas_for(burst_rate, per_replica)) + 1
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
        level_needed = _replicas_for(rate, per_replica) if rate > 0 else 0
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


__all__ = ["CapacityEstimate", "GrowthPoint", "StepModel", "estimate", "replica_step_model"]
