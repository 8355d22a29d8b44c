"""Model geometry: layers, heads, KV layout and parameter counts, from deploy.yaml or a Hugging Face config.json.

The capacity model needs the shapes, not the weights: how many bytes one token of KV cache takes on one GPU, how
many parameters a token touches (MoE: active, not total) and how many bytes the weights take. Geometry comes from
`model.architecture` when declared, else from `model.config_path` (a config.json, relative to the deploy file).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from forge.errors import InputError
from forge.schema import Architecture, Deployment

MAX_CONFIG_BYTES = 5_000_000  # a config.json is a few KB; anything this large is the wrong file

# Hugging Face `torch_dtype` / `dtype` spellings → Forge dtype names.
_HF_DTYPES = {
    "bfloat16": "bf16", "bf16": "bf16", "torch.bfloat16": "bf16",
    "float16": "fp16", "fp16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "float32": "fp32", "fp32": "fp32", "float": "fp32", "torch.float32": "fp32",
}
# Bytes per element of each storage dtype. int4 formats (AWQ/GPTQ) also store one 16-bit scale and one 4-bit zero
# point per group of 128 weights (the default group_size of AutoAWQ and AutoGPTQ): (16 + 4) / 128 bits more.
DTYPE_BYTES = {
    "fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "int8": 1.0,
    "int4": (4 + (16 + 4) / 128) / 8,
}


def dtype_bytes(dtype: str, place: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"{place}: unknown dtype '{dtype}' — use one of {', '.join(sorted(DTYPE_BYTES))}") from None


@dataclass(frozen=True)
class ModelGeometry:
    """Shapes of one decoder-only transformer. Parameter counts are whole-model (not per GPU)."""

    source: str                      # where the geometry came from (for messages)
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    total_params: float
    active_params: float             # parameters a token passes through (MoE: shared + routed experts it picks)
    embedding_params: float          # input embedding + untied lm_head: kept at 16 bits by FP8/INT quantizers
    vocab_size: int | None = None
    num_experts: int | None = None
    experts_per_token: int | None = None
    expert_params: float = 0.0       # all routed-expert parameters of the model (MoE), part of total_params
    kv_lora_rank: int | None = None  # MLA (DeepSeek-V2/V3): the KV cache stores this compressed latent ...
    qk_rope_head_dim: int | None = None  # ... plus the decoupled RoPE key, shared by all heads
    config_dtype: str | None = None  # the checkpoint's dtype as config.json states it

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts and self.experts_per_token)

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank is not None

    def kv_heads_per_gpu(self, tensor_parallel: int) -> int:
        # vLLM shards KV heads across TP ranks; with more ranks than KV heads each rank keeps a replica of one.
        return max(1, self.kv_heads // tensor_parallel)

    def kv_elements_per_token_per_layer(self, tensor_parallel: int) -> int:
        """Elements one token adds to one layer's KV cache on one GPU."""
        if self.uses_mla:
            # MLA caches the latent c_KV (kv_lora_rank) and k_rope (qk_rope_head_dim) once per token, for all
            # heads; vLLM's MLA backends replicate it on every TP rank (DeepSeek-V2 paper, section 2.1.3).
            return int(self.kv_lora_rank) + int(self.qk_rope_head_dim or 0)
        return 2 * self.kv_heads_per_gpu(tensor_parallel) * self.head_dim  # K and V

    def check_parallelism(self, tensor_parallel: int, pipeline_parallel: int, place: str) -> None:
        """vLLM refuses shapes it can't shard evenly; report them as input errors before the engine does."""
        if self.attention_heads % tensor_parallel:
            raise InputError(
                f"{place}: tensor_parallel_size {tensor_parallel} does not divide attention_heads "
                f"{self.attention_heads} — use a divisor of {self.attention_heads}"
            )
        if not self.uses_mla:
            if tensor_parallel <= self.kv_heads and self.kv_heads % tensor_parallel:
                raise InputError(
                    f"{place}: tensor_parallel_size {tensor_parallel} does not divide kv_heads {self.kv_heads} — "
                    f"use a divisor of {self.kv_heads}"
                )
            if tensor_parallel > self.kv_heads and tensor_parallel % self.kv_heads:
                raise InputError(
                    f"{place}: tensor_parallel_size {tensor_parallel} is above kv_heads {self.kv_heads} but not a "
                    f"multiple of it (KV heads can't be replicated evenly) — use a multiple of {self.kv_heads}"
                )
        if pipeline_parallel > self.layers:
            raise InputError(
                f"{place}: pipeline_parallel_size {pipeline_parallel} exceeds the model's {self.layers} layers — "
                "lower pipeline_parallel_size"
            )


# ---------------------------------------------------------------- from model.architecture
def from_architecture(arch: Architecture, place: str = "model.architecture") -> ModelGeometry:
    kv_heads = arch.effective_kv_heads
    if arch.attention_heads % kv_heads:
        raise InputError(
            f"{place}.kv_heads: {kv_heads} does not divide attention_heads {arch.attention_heads} (GQA groups must "
            "be equal) — fix kv_heads"
        )
    head_dim = arch.effective_head_dim
    if head_dim <= 0:
        raise InputError(f"{place}.head_dim: hidden_size / attention_heads is 0 — set head_dim")
    total = arch.params_billion * 1e9
    active = (arch.active_params_billion or arch.params_billion) * 1e9
    embedding = _embedding_params(arch.vocab_size, arch.hidden_size, tied=False) if arch.vocab_size else 0.0
    expert_params = 0.0
    if arch.num_experts and arch.experts_per_token and active < total:
        # Active = shared + k/E · experts, total = shared + experts  ⇒  experts = (total − active) / (1 − k/E).
        expert_params = (total - active) / (1 - arch.experts_per_token / arch.num_experts)
    return ModelGeometry(
        source=place, layers=arch.layers, hidden_size=arch.hidden_size, attention_heads=arch.attention_heads,
        kv_heads=kv_heads, head_dim=head_dim, total_params=total, active_params=active,
        embedding_params=min(embedding, total), vocab_size=arch.vocab_size, num_experts=arch.num_experts,
        experts_per_token=arch.experts_per_token, expert_params=min(expert_params, total),
        kv_lora_rank=arch.kv_lora_rank, qk_rope_head_dim=arch.qk_rope_head_dim,
    )


# ---------------------------------------------------------------- from a Hugging Face config.json
def read_config(path: Path, place: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{place}: {path} does not exist — point model.config_path at the model's config.json "
                         "(relative to the deploy file)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"{place}: {path} is over {MAX_CONFIG_BYTES // 1_000_000} MB — is this a config.json?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{place}: {path} is not valid JSON ({exc}) — use the model's config.json") from None
    if not isinstance(data, dict):
        raise InputError(f"{place}: {path} holds a {type(data).__name__}, not a JSON object — use the model's "
                         "config.json")
    # Multimodal wrappers (Llava, Mllama, Gemma3, Qwen-VL...) nest the language model under text_config.
    text = data.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in data:
        merged = {**data, **text}
        merged.pop("text_config", None)
        return merged
    return data


def _int(cfg: dict[str, Any], key: str, place: str, *, required: bool = True, minimum: int = 1) -> int | None:
    value = cfg.get(key)
    if value is None:
        if required:
            raise InputError(f"{place}: '{key}' is missing — is this a decoder-only transformer's config.json?")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{place}: '{key}' is {value!r}, expected an integer ≥ {minimum} — fix the config.json")
    return value


def _first(cfg: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if cfg.get(k) is not None), None)


def _embedding_params(vocab: int | None, hidden: int, tied: bool) -> float:
    if not vocab:
        return 0.0
    return float(vocab * hidden * (1 if tied else 2))


def from_config(cfg: dict[str, Any], place: str) -> ModelGeometry:
    """Geometry of Llama/Mistral/Qwen/Mixtral/DeepSeek-style configs (the keys transformers uses)."""
    layers = _int(cfg, "num_hidden_layers", place, minimum=0)
    if layers == 0:
        raise InputError(f"{place}: num_hidden_layers is 0 — a model needs at least one layer")
    hidden = _int(cfg, "hidden_size", place)
    heads = _int(cfg, "num_attention_heads", place)
    kv_heads = _int(cfg, "num_key_value_heads", place, required=False) or heads
    if kv_heads > heads or heads % kv_heads:
        raise InputError(f"{place}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads} — "
                         "fix the config.json")
    head_dim = _int(cfg, "head_dim", place, required=False) or hidden // heads
    if head_dim == 0:
        raise InputError(f"{place}: hidden_size / num_attention_heads is 0 — set head_dim")
    vocab = _int(cfg, "vocab_size", place, required=False)
    tied = bool(cfg.get("tie_word_embeddings", False))

    dtype_key = _first(cfg, ("torch_dtype", "dtype"))
    config_dtype = None
    if dtype_key is not None:
        raw = str(cfg[dtype_key])
        config_dtype = _HF_DTYPES.get(raw.lower())
        if config_dtype is None:
            raise InputError(f"{place}: unknown {dtype_key} '{raw}' — use bfloat16, float16 or float32")

    # MLA (DeepSeek-V2/V3, Kimi-K2): attention projections through low-rank latents.
    kv_lora_rank = _int(cfg, "kv_lora_rank", place, required=False)
    rope_dim = _int(cfg, "qk_rope_head_dim", place, required=False, minimum=0) if kv_lora_rank else None
    if kv_lora_rank:
        nope_dim = _int(cfg, "qk_nope_head_dim", place)
        v_dim = _int(cfg, "v_head_dim", place, required=False) or nope_dim
        q_rank = _int(cfg, "q_lora_rank", place, required=False)
        q_head = nope_dim + (rope_dim or 0)
        q_proj = hidden * q_rank + q_rank * heads * q_head if q_rank else hidden * heads * q_head
        attention = (q_proj + hidden * (kv_lora_rank + (rope_dim or 0)) + kv_lora_rank * heads * (nope_dim + v_dim)
                     + heads * v_dim * hidden)
        head_dim = q_head
    else:
        attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden

    # Dense MLP (SwiGLU: gate, up, down = 3 matrices).
    dense_inter = _int(cfg, "intermediate_size", place, required=False) or 4 * hidden
    dense_mlp = 3 * hidden * dense_inter

    experts_key = _first(cfg, ("n_routed_experts", "num_local_experts", "num_experts"))
    num_experts = _int(cfg, experts_key, place) if experts_key else None
    per_token = _int(cfg, "num_experts_per_tok", place, required=False) if num_experts else None
    if num_experts and not per_token:
        raise InputError(f"{place}: {experts_key} is set but num_experts_per_tok is missing — add it")
    if num_experts and per_token and per_token > num_experts:
        raise InputError(f"{place}: num_experts_per_tok {per_token} exceeds {experts_key} {num_experts}")

    expert_params_total = 0.0
    if num_experts and num_experts > 1:
        # Mixtral uses intermediate_size for its experts; Qwen-MoE and DeepSeek name it moe_intermediate_size.
        expert_inter = _int(cfg, "moe_intermediate_size", place, required=False) or dense_inter
        one_expert = 3 * hidden * expert_inter
        shared_inter = _int(cfg, "shared_expert_intermediate_size", place, required=False)
        n_shared = _int(cfg, "n_shared_experts", place, required=False, minimum=0) or 0
        shared = 3 * hidden * shared_inter if shared_inter else n_shared * one_expert
        dense_layers = _int(cfg, "first_k_dense_replace", place, required=False, minimum=0) or 0
        dense_layers = min(dense_layers, layers)
        moe_layers = layers - dense_layers
        router = hidden * num_experts
        expert_params_total = float(moe_layers * num_experts * one_expert)
        mlp_total = dense_layers * dense_mlp + moe_layers * (num_experts * one_expert + shared + router)
        mlp_active = dense_layers * dense_mlp + moe_layers * (per_token * one_expert + shared + router)
    else:
        num_experts = per_token = None
        mlp_total = mlp_active = layers * dense_mlp

    norms = layers * 2 * hidden + hidden
    embedding = _embedding_params(vocab, hidden, tied)
    total = layers * attention + mlp_total + norms + embedding
    active = layers * attention + mlp_active + norms + embedding
    return ModelGeometry(
        source=place, layers=layers, hidden_size=hidden, attention_heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, total_params=float(total), active_params=float(active), embedding_params=embedding,
        vocab_size=vocab, num_experts=num_experts, experts_per_token=per_token, expert_params=expert_params_total,
        kv_lora_rank=kv_lora_rank, qk_rope_head_dim=rope_dim, config_dtype=config_dtype,
    )


def geometry(deployment: Deployment, base_dir: Path | None = None) -> ModelGeometry:
    """The deployment's model geometry; `model.architecture` wins over `model.config_path` when both are set."""
    model = deployment.model
    args = deployment.engine.args
    if model.architecture is not None:
        geo = from_architecture(model.architecture)
        if model.config_path:
            # The architecture block states the shapes; config.json may still say which dtype the weights are.
            path = _resolve(model.config_path, base_dir)
            if path.is_file():
                geo = replace(geo, config_dtype=from_config(read_config(path, "model.config_path"),
                                                            f"model.config_path ({path})").config_dtype)
    elif model.config_path:
        path = _resolve(model.config_path, base_dir)
        geo = from_config(read_config(path, "model.config_path"), f"model.config_path ({path})")
    else:
        raise InputError("model: neither architecture nor config_path is set — declare model.architecture "
                         "(layers, hidden_size, heads...) or point model.config_path at the model's config.json")
    geo.check_parallelism(args.tensor_parallel_size, args.pipeline_parallel_size, "engine.args.tensor_parallel_size")
    return geo


def _resolve(config_path: str, base_dir: Path | None) -> Path:
    path = Path(config_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        path = path / "config.json"
    return path


def layers_per_stage(geo: ModelGeometry, pipeline_parallel: int) -> int:
    # vLLM splits layers as evenly as it can; the fullest stage decides the KV cache of the replica.
    return math.ceil(geo.layers / pipeline_parallel)
