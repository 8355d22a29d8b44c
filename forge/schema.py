"""The deploy.yaml contract (apiVersion forge/v1, kind InferenceDeployment).

Every section is optional: a team that never thought about security gets security findings, not a crash.
Our own fields carry their unit in the name; `engine.args` keeps the engine's native flag names.
"""

# No `from __future__ import annotations` here: pydantic would have to compile every field's annotation string
# at start-up (~170 of them); evaluated annotations cost nothing extra.

import datetime as dt
import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

API_VERSION = "forge/v1"
KIND = "InferenceDeployment"


def located(message: str, at: str, also: list[tuple[str, str]] | None = None) -> PydanticCustomError:
    """A validation error placed at the key at fault (`at`, dotted, relative to the model raising it) rather than
    at the whole section; `also` carries further (at, message) problems found by the same validator."""
    return PydanticCustomError("forge_located", "{message}", {"message": message, "at": at, "also": also or []})


def _takes_number_not_bool(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", None)
    kinds = set(args) if args and getattr(annotation, "__origin__", None) is not Literal else {annotation}
    return bool(kinds & {int, float}) and bool not in kinds


class _NumbersAreNotBools(BaseModel):
    """YAML reads yes/no/on/off/true as booleans and pydantic would quietly take True as 1: a number field that
    receives a boolean is a mistake worth an error."""

    # Build validators on first use, not at import: validating a Deployment builds one schema for the whole tree
    # instead of one per model class, which halves the start-up cost of every `forge` command.
    model_config = ConfigDict(defer_build=True)

    # One model-level check instead of a validator on every field: it builds far faster (one wrapper per model,
    # not ~170 per deployment) and reports every offending key of the model at once.
    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            numeric = _numeric_fields(cls)
            bad = [key for key, value in data.items() if isinstance(value, bool) and key in numeric]
            if bad:
                problems = [(str(key), f"expected a number, got {str(data[key]).lower()} — write digits only "
                                       "(YAML reads yes/no/on/off as true/false)") for key in bad]
                raise located(problems[0][1], problems[0][0], problems[1:])
        return data


_NUMERIC_FIELDS: dict[type, frozenset[str]] = {}


def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the model's fields that take a number and not a boolean (computed once per model class)."""
    found = _NUMERIC_FIELDS.get(model)
    if found is None:
        found = _NUMERIC_FIELDS[model] = frozenset(
            name for name, info in model.model_fields.items() if _takes_number_not_bool(info.annotation))
    return found


class Strict(_NumbersAreNotBools):
    """Unknown keys are errors: a typo must never silently drop a setting."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


PositiveFloat = float
Fraction = float


# ---------------------------------------------------------------- metadata
class Metadata(Strict):
    name: str = Field(min_length=1, max_length=253, description="Deployment name (DNS-1123 label style).")
    team: str | None = Field(None, description="Owning team; used for chargeback labels.")
    environment: Literal["prod", "staging", "dev"] | None = None
    cost_center: str | None = Field(None, description="Cost center for chargeback.")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", v):
            slug = re.sub(r"[^a-z0-9.-]+", "-", v.lower()).strip("-.")
            hint = f"did you mean '{slug}'?" if slug else "e.g. 'chat-70b'"
            raise ValueError(f"must be lowercase letters, digits, '-' or '.', starting and ending alphanumeric — {hint}")
        return v


# ---------------------------------------------------------------- model
class Architecture(Strict):
    params_billion: float = Field(gt=0, le=100_000, description="Total parameters, in billions.")
    active_params_billion: float | None = Field(
        None, gt=0, le=100_000, description="Parameters active per token (MoE); defaults to params_billion."
    )
    layers: int = Field(gt=0, le=1000)
    hidden_size: int = Field(gt=0, le=1_000_000)
    attention_heads: int = Field(gt=0, le=10_000)
    kv_heads: int | None = Field(None, gt=0, le=10_000, description="Key/value heads (GQA); defaults to attention_heads.")
    head_dim: int | None = Field(None, gt=0, le=10_000, description="Defaults to hidden_size / attention_heads.")
    vocab_size: int | None = Field(None, gt=0, le=10_000_000)
    intermediate_size: int | None = Field(None, gt=0)
    num_experts: int | None = Field(None, gt=0, description="MoE: routed experts per layer.")
    experts_per_token: int | None = Field(None, gt=0, description="MoE: experts active per token.")
    kv_lora_rank: int | None = Field(None, gt=0, description="MLA: compressed KV latent rank (DeepSeek-style).")
    qk_rope_head_dim: int | None = Field(None, gt=0, description="MLA: decoupled RoPE key dimension.")

    @model_validator(mode="after")
    def _consistent(self) -> "Architecture":
        if self.kv_heads is not None and self.kv_heads > self.attention_heads:
            raise ValueError(f"kv_heads ({self.kv_heads}) cannot exceed attention_heads ({self.attention_heads})")
        if self.active_params_billion is not None and self.active_params_billion > self.params_billion:
            raise ValueError("active_params_billion cannot exceed params_billion")
        if (self.num_experts is None) != (self.experts_per_token is None):
            raise ValueError("num_experts and experts_per_token go together (MoE)")
        if self.num_experts and self.experts_per_token and self.experts_per_token > self.num_experts:
            raise ValueError("experts_per_token cannot exceed num_experts")
        return self

    @property
    def effective_kv_heads(self) -> int:
        return self.kv_heads or self.attention_heads

    @property
    def effective_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.attention_heads


class Weights(Strict):
    dtype: Literal["bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    quantization: Literal["none", "fp8", "awq", "gptq", "smoothquant"] = "none"
    source: str | None = Field(None, description="Where the weights come from (registry, bucket, hub id).")
    sha256: str | None = None
    signed: bool = False
    delivery: Literal["image", "volume", "object-store", "node-cache"] | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("must be 64 hexadecimal characters (a SHA-256 digest) — paste the full digest "
                             "that `sha256sum` prints")
        return v

    @model_validator(mode="after")
    def _dtype_matches_quant(self) -> "Weights":
        if self.quantization == "fp8" and self.dtype != "fp8":
            raise located("quantization fp8 needs dtype fp8 — set dtype: fp8", "dtype")
        if self.quantization in ("awq", "gptq") and self.dtype not in ("int4", "int8"):
            raise located(f"quantization {self.quantization} stores int4/int8 weights — set dtype int4 or int8",
                          "dtype")
        if self.quantization == "none" and self.dtype in ("fp8", "int8", "int4"):
            method = "fp8" if self.dtype == "fp8" else "awq, gptq or smoothquant"
            raise located(f"dtype {self.dtype} is a quantized format but quantization is none — set quantization "
                          f"({method})", "quantization")
        return self


class LoRA(Strict):
    adapters: list[str] = Field(default_factory=list)
    max_loras: int = Field(1, gt=0)
    max_lora_rank: int = Field(16, gt=0)


class Model(Strict):
    name: str = Field(min_length=1)
    architecture: Architecture | None = None
    config_path: str | None = Field(None, description="A Hugging Face config.json, relative to the deploy file.")
    max_model_len: int | None = Field(None, gt=0, le=100_000_000, description="Longest context served, in tokens.")
    weights: Weights | None = None
    lora: LoRA | None = None


# ---------------------------------------------------------------- engine
class SpeculativeConfig(_NumbersAreNotBools):
    model_config = ConfigDict(extra="allow")
    method: str | None = None
    model: str | None = None
    num_speculative_tokens: int = Field(gt=0, le=64)
    expected_acceptance_rate: float | None = Field(None, ge=0, le=1)


KNOWN_ENGINE_ARGS = {
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "gpu_memory_utilization",
    "kv_cache_memory_bytes", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype", "block_size",
    "enable_prefix_caching", "enable_chunked_prefill", "shutdown_timeout", "speculative_config", "enable_lora",
    "max_loras", "max_lora_rank", "swap_space", "cpu_offload_gb", "max_model_len", "quantization", "dtype",
    "enforce_eager", "disable_log_requests", "served_model_name", "kv_transfer_config", "seed",
}


class EngineArgs(_NumbersAreNotBools):
    """Engine-native flags in snake_case. Unlisted flags pass through, but near-misses of known ones are typos."""

    model_config = ConfigDict(extra="allow")
    tensor_parallel_size: int = Field(1, gt=0, le=64)
    pipeline_parallel_size: int = Field(1, gt=0, le=64)
    data_parallel_size: int = Field(1, gt=0, le=1024)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, gt=0, le=1_000_000)
    max_num_batched_tokens: int | None = Field(None, gt=0)
    kv_cache_dtype: Literal["auto", "bf16", "fp16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    block_size: int | None = Field(None, gt=0, le=1024, description="KV block size in tokens; default is the "
                                   "engine's (vLLM: 16 on GPUs, 128 on its CPU backend).")
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    shutdown_timeout: float | None = Field(None, ge=0, description="Seconds in-flight requests get after SIGTERM.")
    speculative_config: SpeculativeConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _typos(cls, data: Any) -> Any:
        problems: list[tuple[str, str]] = []
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key not in KNOWN_ENGINE_ARGS:
                    close = difflib.get_close_matches(key, sorted(KNOWN_ENGINE_ARGS), n=1, cutoff=0.85)
                    if close:
                        problems.append((key, f"unknown engine flag '{key}' — did you mean '{close[0]}'?"))
                    elif "-" in key:
                        problems.append((key, f"engine flag '{key}' must be snake_case — write "
                                              f"'{key.replace('-', '_')}'"))
        if problems:
            raise located(problems[0][1], problems[0][0], problems[1:])
        return data


class Disaggregation(Strict):
    prefill_replicas: int = Field(gt=0)
    decode_replicas: int = Field(gt=0)
    kv_connector: str | None = Field(None, description="KV transfer connector (e.g. NixlConnector, LMCache).")


class Engine(Strict):
    name: Literal["vllm", "trtllm", "sglang", "tgi"]
    version: str | None = None
    args: EngineArgs = Field(default_factory=EngineArgs)
    disaggregation: Disaggregation | None = None


# ---------------------------------------------------------------- hardware
class ReplicaRange(Strict):
    min: int = Field(ge=0, le=100_000)
    max: int = Field(ge=0, le=100_000)

    @model_validator(mode="after")
    def _order(self) -> "ReplicaRange":
        if self.max < self.min:
            raise located(f"max ({self.max}) is below min ({self.min}) — raise max or lower min", "max")
        return self


class Hardware(Strict):
    gpu: str = Field(description="GPU catalog id (see `forge readiness hardware`).")
    gpus_per_replica: int = Field(1, gt=0, le=1024)
    replicas: ReplicaRange | None = None
    capacity: Literal["on-demand", "spot", "reserved"] = "on-demand"
    price_per_gpu_hour: float | None = Field(None, ge=0, le=10_000, description="USD per GPU-hour.")
    calibration: str | None = Field(
        None, min_length=1, description="Efficiency factors fitted on this engine by `forge capacity calibrate --save "
        "FILE` (path relative to this file); the capacity model uses them instead of the hardware catalog's.")

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        from forge.hardware import gpu_ids

        ids = gpu_ids()
        if v not in ids:
            close = difflib.get_close_matches(v, ids, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else "use a catalog id: "
            raise ValueError(f"unknown GPU '{v}' — {hint}known: {', '.join(ids)}")
        return v


# ---------------------------------------------------------------- traffic & SLO
def _check_order(profile: BaseModel, names: tuple[str, str, str]) -> None:
    for low, high in zip(names, names[1:]):
        a, b = getattr(profile, low), getattr(profile, high)
        if a > b:
            raise located(f"{low} ({a:g}) is above {high} ({b:g}) — needs {' <= '.join(names)}; raise {high} or "
                          f"lower {low}", low)


class RateProfile(Strict):
    p50: float = Field(ge=0, le=10_000_000)
    p95: float = Field(ge=0, le=10_000_000)
    peak: float = Field(ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _order(self) -> "RateProfile":
        _check_order(self, ("p50", "p95", "peak"))
        return self


class TokenProfile(Strict):
    p50: int = Field(ge=0, le=100_000_000)
    p95: int = Field(ge=0, le=100_000_000)
    max: int = Field(ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _order(self) -> "TokenProfile":
        _check_order(self, ("p50", "p95", "max"))
        return self


class ArrivalProcess(Strict):
    """How requests arrive, for the capacity model's simulation (docs/capacity.md)."""

    process: Literal["poisson", "gamma", "trace"] = "poisson"
    cv: float | None = Field(None, ge=0, le=20, description="gamma: coefficient of variation of inter-arrival gaps "
                             "(1 = Poisson, above 1 = bursty), as `forge load run --burstiness`.")
    trace: str | None = Field(None, description="trace: an Azure LLM trace CSV (TIMESTAMP,ContextTokens,"
                              "GeneratedTokens) or Forge trace JSONL, relative to the deploy file.")

    @model_validator(mode="after")
    def _parameters(self) -> "ArrivalProcess":
        if self.process == "gamma" and self.cv is None:
            raise located("process gamma needs cv (e.g. cv: 2 for bursty traffic; 1 is Poisson)", "cv")
        if self.process != "gamma" and self.cv is not None:
            raise located(f"cv applies to process gamma only, not {self.process} — drop cv or set process: gamma",
                          "cv")
        if self.process == "trace" and not self.trace:
            raise located("process trace needs trace: a path to an Azure-schema CSV or a Forge trace JSONL", "trace")
        if self.process != "trace" and self.trace:
            raise located(f"trace applies to process trace only, not {self.process} — set process: trace", "trace")
        return self


class Traffic(Strict):
    requests_per_second: RateProfile | None = None
    prompt_tokens: TokenProfile | None = None
    output_tokens: TokenProfile | None = None
    prefix_cache_hit_rate: float | None = Field(None, ge=0, le=1, description="Expected share of prompt tokens served from prefix cache.")
    growth: list[float] = Field(default_factory=lambda: [1.0, 3.0, 10.0], min_length=1)
    arrival: ArrivalProcess | None = Field(None, description="Arrival process; Poisson when absent.")

    @field_validator("growth")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(g <= 0 or g > 10_000 for g in v):
            raise ValueError("growth factors must be in (0, 10000], e.g. [1, 3, 10]")
        return v


class SLO(Strict):
    ttft_p95_seconds: float | None = Field(None, gt=0, le=3600)
    itl_p95_seconds: float | None = Field(None, gt=0, le=60)
    e2e_p95_seconds: float | None = Field(None, gt=0, le=86_400)
    availability: float | None = Field(None, gt=0, lt=1, description="Target success ratio, e.g. 0.999.")
    window_days: int = Field(30, gt=0, le=365)
    cost_budget_usd_per_1m_output_tokens: float | None = Field(
        None, gt=0, le=1_000_000, description="Most the deployment may spend, in USD of GPU time per million output "
        "tokens over an hour; ForgeCostPerMillionTokensOverBudget fires above it.")


# ---------------------------------------------------------------- rollout
class Analysis(Strict):
    interval_seconds: float = Field(gt=0, le=86_400)
    failure_limit: int = Field(ge=0, le=1000)
    metrics: list[str] = Field(default_factory=list)


class Rollout(Strict):
    strategy: Literal["canary", "blue-green", "rolling", "recreate"] | None = None
    automated_rollback: bool = False
    rollback_seconds: float | None = Field(None, gt=0, le=86_400, description="Measured or expected time to roll back.")
    analysis: Analysis | None = None
    canary_steps: list[int] = Field(default_factory=list, description="Traffic percentages per canary step.")


# ---------------------------------------------------------------- reliability
class ProgressWatchdog(Strict):
    enabled: bool = True
    stall_seconds: float = Field(30, gt=0, le=3600)


class Liveness(Strict):
    http_path: str | None = None
    progress_watchdog: ProgressWatchdog | bool | None = None

    @property
    def watchdog_enabled(self) -> bool:
        wd = self.progress_watchdog
        return bool(wd.enabled if isinstance(wd, ProgressWatchdog) else wd)


class Probe(Strict):
    http_path: str
    period_seconds: float = Field(10, gt=0)


class SpotDrain(Strict):
    enabled: bool = True
    notice_source: Literal["aws", "gcp", "azure", "kubernetes"] | None = None
    checkpoint_resume: bool = False


class PDB(Strict):
    min_available: int | str


class ChaosExperimentRef(Strict):
    name: str
    last_run: dt.date | None = None
    passed: bool | None = None


class Reliability(Strict):
    termination_grace_period_seconds: float | None = Field(None, ge=0, le=86_400)
    liveness: Liveness | None = None
    readiness_probe: Probe | None = None
    startup_seconds: float | None = Field(None, gt=0, description="Measured cold start to ready.")
    spot_drain: SpotDrain | bool | None = None
    pod_disruption_budget: PDB | None = None
    failure_modes: list[str] = Field(default_factory=list)
    chaos_experiments: list[ChaosExperimentRef | str] = Field(default_factory=list)
    request_timeout_seconds: float | None = Field(None, gt=0)
    retries: int | None = Field(None, ge=0, le=10)

    @property
    def spot_drain_enabled(self) -> bool:
        sd = self.spot_drain
        return bool(sd.enabled if isinstance(sd, SpotDrain) else sd)

    @property
    def chaos_names(self) -> list[str]:
        return [c if isinstance(c, str) else c.name for c in self.chaos_experiments]


# ---------------------------------------------------------------- observability
class AlertRef(Strict):
    name: str
    runbook_url: str | None = None
    severity: Literal["page", "ticket", "info"] | None = None


class Observability(Strict):
    engine_metrics: bool = False
    gpu_metrics: Literal["dcgm-exporter", "nvml", "none"] = "none"
    signals: list[str] = Field(default_factory=list, description="Canonical signals collected (catalog names).")
    dashboards: list[str] = Field(default_factory=list)
    alerts: list[AlertRef | str] = Field(default_factory=list)
    tracing: bool = False
    log_retention_days: int | None = Field(None, ge=0)


# ---------------------------------------------------------------- security
class Security(Strict):
    threat_model: str | None = Field(None, description="Link or path to the threat model.")
    data_classification: Literal["public", "internal", "confidential", "restricted"] | None = None
    pii: bool | None = None
    authn: Literal["none", "api-key", "oidc", "mtls"] | None = None
    network_policy: bool = False
    weights_verified: bool = False
    sbom: bool = False
    prompt_injection_defense: bool = False
    tls: bool | None = None
    log_prompts: bool | None = None
    rate_limit_rps_per_client: float | None = Field(None, gt=0)


# ---------------------------------------------------------------- operations
class Operations(Strict):
    runbooks: list[str] = Field(default_factory=list)
    oncall_rotation: str | None = None
    escalation_policy: str | None = None
    synthetic_monitoring: bool = False
    last_game_day: dt.date | None = None
    postmortems: bool | None = None


# ---------------------------------------------------------------- correctness
class Eval(Strict):
    suite: str = Field(min_length=1)
    baseline_score: float | None = None
    min_score: float | None = None
    last_score: float | None = None


class Correctness(Strict):
    input_validation: bool = False
    output_schema: bool = False
    contract_tests: bool = False
    max_tokens_cap: int | None = Field(None, gt=0)
    eval: Eval | None = None


class Waiver(Strict):
    check: str = Field(pattern=r"^[A-Z]{3,4}-\d{3}$")
    reason: str = Field(min_length=3)
    expires: dt.date

    @field_validator("check", mode="before")
    @classmethod
    def _check_id(cls, v: Any) -> Any:
        if isinstance(v, str) and not re.fullmatch(r"[A-Z]{3,4}-\d{3}", v):
            hint = f"did you mean '{v.upper()}'? " if re.fullmatch(r"[A-Z]{3,4}-\d{3}", v.upper()) else ""
            raise ValueError(f"'{v}' is not a check id — {hint}use an id like REL-004 (`forge readiness checks` "
                             "lists them)")
        return v


class Evidence(Strict):
    load_results: list[str] = Field(default_factory=list)
    chaos_journals: list[str] = Field(default_factory=list)
    prometheus_url: str | None = None


class Deployment(Strict):
    """One LLM inference deployment, as deploy.yaml describes it."""

    apiVersion: Literal["forge/v1"]
    kind: Literal["InferenceDeployment"]
    metadata: Metadata
    model: Model
    engine: Engine
    hardware: Hardware
    traffic: Traffic | None = None
    slo: SLO | None = None
    rollout: Rollout | None = None
    reliability: Reliability | None = None
    observability: Observability | None = None
    security: Security | None = None
    operations: Operations | None = None
    correctness: Correctness | None = None
    waivers: list[Waiver] = Field(default_factory=list)
    evidence: Evidence | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> "Deployment":
        args = self.engine.args
        parallel = args.tensor_parallel_size * args.pipeline_parallel_size
        if self.hardware.gpu != "CPU" and parallel > self.hardware.gpus_per_replica:
            raise located(
                f"tensor_parallel_size x pipeline_parallel_size = {parallel} needs hardware.gpus_per_replica >= "
                f"{parallel} (got {self.hardware.gpus_per_replica}) — set gpus_per_replica: {parallel} or lower "
                "the parallelism", "engine.args.tensor_parallel_size"
            )
        return self


def json_schema() -> dict[str, Any]:
    schema = Deployment.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://forge.dev/schemas/deploy.schema.json"
    schema["title"] = "Forge InferenceDeployment (forge/v1)"
    return schema
