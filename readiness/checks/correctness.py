"""Dimension 1 — correctness & contracts: the service answers what its API promises, as accurately as tested."""

from __future__ import annotations

from forge.readiness.checks import _sections as s
from forge.readiness.registry import check, not_applicable, passed, violated


@check("COR-001", "correctness", "high", "Requests are validated before they reach the engine",
       rationale="""Oversized prompts, max_tokens beyond the context window and malformed sampling parameters
       otherwise become engine errors, preemption storms or 500s that burn the error budget.""",
       remediation="""Validate at the gateway or API layer (prompt + max_tokens <= max_model_len, parameter
       ranges, payload size) and set correctness.input_validation: true.""",
       path="correctness.input_validation")
def input_validation(ctx):
    if not s.correctness(ctx).input_validation:
        return violated("no request validation declared in front of the engine")
    return passed("requests are validated before the engine")


@check("COR-002", "correctness", "medium", "Responses have a declared output contract",
       rationale="""Clients that parse model output (JSON, tool calls) break silently when the model or the
       engine's structured-output backend changes; a schema makes the contract testable.""",
       remediation="""Declare the response schema (OpenAI-compatible plus any JSON schema / guided decoding you
       rely on) and set correctness.output_schema: true.""",
       path="correctness.output_schema")
def output_schema(ctx):
    if not s.correctness(ctx).output_schema:
        return violated("no output schema declared", warn=True)
    return passed("output schema declared")


@check("COR-003", "correctness", "high", "API contract tests run against every release",
       rationale="""Engine upgrades change API behaviour (stop sequences, usage fields, streaming chunks,
       error codes). Contract tests catch that before users do.""",
       remediation="""Run contract tests (OpenAI-compatible request/response, streaming, error codes) in the
       release pipeline and set correctness.contract_tests: true.""",
       path="correctness.contract_tests")
def contract_tests(ctx):
    if not s.correctness(ctx).contract_tests:
        return violated("no contract tests declared for the serving API")
    return passed("contract tests declared")


def _quantized(ctx) -> list[str]:
    w = ctx.d.model.weights
    what = []
    if w is not None and w.quantization != "none":
        what.append(f"weights {w.quantization} ({w.dtype})")
    kv = ctx.d.engine.args.kv_cache_dtype
    if kv.startswith("fp8"):
        what.append(f"kv_cache_dtype {kv}")
    return what


@check("COR-004", "correctness", "critical", "Quantization is backed by an accuracy evaluation",
       rationale="""FP8/INT4 weights and FP8 KV caches trade accuracy for speed; the loss depends on the model
       and the task and is invisible in latency dashboards. Shipping it unevaluated ships an unknown model.""",
       remediation="""Run an eval suite on the quantized model against the unquantized baseline and declare
       correctness.eval {suite, baseline_score, min_score}.""",
       path="model.weights.quantization")
def quantization_eval(ctx):
    what = _quantized(ctx)
    if not what:
        return not_applicable("no quantization")
    ev = s.correctness(ctx).eval
    if ev is None:
        return violated(f"{' and '.join(what)} without an accuracy evaluation", quantized=what)
    return passed(f"{' and '.join(what)} evaluated with {ev.suite}", suite=ev.suite)


@check("COR-005", "correctness", "high", "Model quality meets its evaluation threshold",
       rationale="""An eval without a pass mark gates nothing; a last score below the threshold means the
       deployed model is known to be worse than agreed.""",
       remediation="""Set correctness.eval.min_score (and baseline_score), record last_score from the latest
       run, and block the rollout when it is below min_score.""",
       path="correctness.eval")
def eval_threshold(ctx):
    ev = s.correctness(ctx).eval
    if ev is None:
        return violated("no model evaluation declared", warn=True)
    if ev.min_score is None:
        return violated(f"eval suite {ev.suite} has no min_score: it gates nothing", "correctness.eval.min_score",
                        suite=ev.suite)
    if ev.last_score is not None and ev.last_score < ev.min_score:
        return violated(f"last eval score {ev.last_score} is below min_score {ev.min_score}",
                        "correctness.eval.last_score", last_score=ev.last_score, min_score=ev.min_score)
    if ev.baseline_score is not None and ev.min_score > ev.baseline_score:
        return violated(f"min_score {ev.min_score} is above the baseline {ev.baseline_score}: unreachable",
                        "correctness.eval.min_score", warn=True, min_score=ev.min_score, baseline_score=ev.baseline_score)
    return passed(f"eval {ev.suite} gates at {ev.min_score}", suite=ev.suite, min_score=ev.min_score)


@check("COR-006", "correctness", "medium", "Generation length is capped",
       rationale="""Without a max_tokens cap one client can ask for the whole context window, holding a
       sequence slot and KV blocks for minutes and starving everyone else.""",
       remediation="""Cap max_tokens at the API layer (correctness.max_tokens_cap) at or below the declared
       traffic.output_tokens.max.""",
       path="correctness.max_tokens_cap")
def max_tokens_cap(ctx):
    cap = s.correctness(ctx).max_tokens_cap
    if cap is None:
        return violated("no max_tokens cap declared", warn=True)
    max_len = ctx.d.model.max_model_len
    if max_len is not None and cap >= max_len:
        return violated(f"max_tokens_cap {cap} is not below max_model_len {max_len}", warn=True,
                        max_tokens_cap=cap, max_model_len=max_len)
    return passed(f"max_tokens capped at {cap}", max_tokens_cap=cap)


@check("COR-007", "correctness", "high", "The model's geometry is declared",
       rationale="""Without the architecture (or a config.json) nobody can check that the model fits, how much
       KV cache it gets, or what latency to expect — every capacity claim is a guess.""",
       remediation="""Add model.architecture {params_billion, layers, hidden_size, attention_heads, kv_heads,
       head_dim} or model.config_path pointing at the model's Hugging Face config.json.""",
       path="model")
def geometry_declared(ctx):
    m = ctx.d.model
    if m.architecture is None and m.config_path is None:
        return violated("neither model.architecture nor model.config_path is set")
    if ctx.capacity is None:
        return violated(f"the model geometry can't be read: {ctx.capacity_error}", "model.config_path")
    return passed("model geometry known")
