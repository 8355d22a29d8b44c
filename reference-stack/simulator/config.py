"""The simulator's options: one dataclass shared by `serve(**options)` and the CLI flags (`--max-num-seqs` ...).

Timing defaults approximate the tiny Llama on the 2-core CPU machines (../shared/notes/vllm-cpu.md: TTFT p50
16 ms for 64-token prompts, ITL p50 3.4 ms at 10 req/s): step overhead 2.5 ms + 0.18 ms per prefill token gives
~14 ms for a 64-token prefill; + 0.4 ms per decoding sequence gives ~3 ms per token at low load, growing with
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

# The tiny Llama's KV cache with VLLM_CPU_KVCACHE_SPACE=1: 2,097,152 tokens (../shared/notes/vllm-cpu.md),
# 1 GiB / 512 bytes per token (2 layers x 2 KV heads x 32 head dim x 2 (K and V) x 2 bytes).
TINY_KV_TOKENS = 2_097_152
TINY_KV_BYTES_PER_TOKEN = 512


def _opt(help_text: str, **kwargs):
    return field(metadata={"help": help_text}, **kwargs)


@dataclass
class SimulatorConfig:
    engines: int = _opt("simulated engines in this process, served under /engines/{i}/... (engine 0 also at /)",
                        default=1)
    model: str = _opt("model name served and used as the model_name label", default="tiny")
    max_model_len: int = _opt("context length: prompt + max_tokens must fit", default=1024)
    max_num_seqs: int = _opt("most requests in one batch (running)", default=256)
    max_num_batched_tokens: int = _opt("token budget of one engine step (prefills are chunked to fit)",
                                       default=2048)
    block_size: int = _opt("KV cache block size in tokens", default=16)
    kv_blocks: int = _opt("KV cache capacity in blocks", default=TINY_KV_TOKENS // 16)
    kv_bytes_per_token: int = _opt("KV bytes per token, only for cache_config_info", default=TINY_KV_BYTES_PER_TOKEN)
    enable_prefix_caching: bool = _opt("reuse KV blocks of repeated prompt prefixes", default=True)
    step_overhead_s: float = _opt("fixed cost of every engine step (s)", default=0.0025)
    prefill_time_per_token_s: float = _opt("cost of each prompt token computed in a step (s)", default=0.00018)
    decode_time_per_seq_s: float = _opt("cost of each decoding sequence in a step (s)", default=0.0004)
    spec_tokens: int = _opt("speculative decoding: draft tokens per step (0 = off)", default=0)
    spec_acceptance_rate: float = _opt("speculative decoding: chance each draft token is accepted", default=0.7)
    eos_probability: float = _opt("chance per generated token of an EOS (ignored with ignore_eos)", default=0.0)
    seed: int = _opt("seed of every random choice (EOS, acceptance, error_rate)", default=0)
    crash_action: str = _opt("what the crash fault does: 'exit' the process or 'fail' the engine (requests "
                             "500, /health 500, `none` revives it)", default="fail")
    shutdown_timeout_s: float = _opt("on SIGTERM, let in-flight requests finish for this long before ending them "
                                     "with an error (vLLM's --shutdown-timeout; 0 = at once)", default=0.0)
    gpu_model_name: str = _opt("modelName label on /gpu-metrics", default="NVIDIA H100 80GB HBM3")
    hostname: str = _opt("Hostname label on /gpu-metrics (engine i appends -i)", default="forge-sim")

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.engines >= 1, f"engines must be >= 1, got {self.engines}")
        need(self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        need(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        need(self.max_model_len >= 2, f"max_model_len must be >= 2, got {self.max_model_len}")
        need(self.max_num_batched_tokens >= 1 + self.spec_tokens,
             f"max_num_batched_tokens must be >= {1 + self.spec_tokens}, got {self.max_num_batched_tokens}")
        # vLLM refuses to start when one full-length request cannot fit in the KV cache; so do we, which also
        # guarantees a lone request never needs to preempt itself.
        need(self.kv_blocks * self.block_size >= self.max_model_len,
             f"kv_blocks x block_size ({self.kv_blocks * self.block_size} tokens) must hold max_model_len "
             f"({self.max_model_len}); raise kv_blocks or lower max_model_len")
        for name in ("step_overhead_s", "prefill_time_per_token_s", "decode_time_per_seq_s"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.shutdown_timeout_s >= 0, f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        need(self.spec_tokens >= 0, f"spec_tokens must be >= 0, got {self.spec_tokens}")
        for name in ("spec_acceptance_rate", "eos_probability"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be within [0, 1], got {getattr(self, name)}")
        need(self.crash_action in ("exit", "fail"), f"crash_action must be 'exit' or 'fail', got {self.crash_action!r}")

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
