"""Dimension 2 — performance & capacity: the model fits, the longest request fits, the SLO holds at 1×."""

from __future__ import annotations

import math
from pathlib import Path

from forge.readiness.checks import _sections as s
from forge.readiness.checks.cost import delta
from forge.readiness.registry import check, not_applicable, passed, violated

GiB = 1024**3


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


@check("PERF-001", "performance", "critical", "The model fits in GPU memory",
       rationale="""Weights plus activations and the runtime reserve must fit in the memory vLLM may use
       (gpu_memory_utilization × HBM), with room left for a useful KV cache; otherwise the engine refuses to
       start or runs with a KV cache too small to batch.""",
       remediation="""Raise tensor_parallel_size (more GPUs per replica), quantize the weights (FP8 / INT4 with an
       accuracy eval), or pick a GPU with more memory.""",
       path="hardware.gpu")
def model_fits(ctx):
    cap = ctx.capacity
    if cap is None:
        return not_applicable("model geometry unknown (see COR-007)")
    ev = {"weights_bytes_per_gpu": cap.weights_bytes_per_gpu, "kv_cache_bytes_per_gpu": cap.kv_cache_bytes_per_gpu,
          "gpu": ctx.d.hardware.gpu, "tensor_parallel_size": ctx.d.engine.args.tensor_parallel_size}
    if not cap.fits:
        # Price the first remedy: twice the GPUs per replica (TP × 2), re-planned; 0 → its cost at 1×.
        from forge.readiness.capacity import monthly_cost, what_if

        tp = ctx.d.engine.args.tensor_parallel_size
        wider = what_if(ctx.d, ctx.base_dir, {"engine.args.tensor_parallel_size": 2 * tp,
                                              "hardware.gpus_per_replica": 2 * ctx.d.hardware.gpus_per_replica})
        message = f"does not fit: {cap.fit_reason}"
        if wider is not None and wider.fits:
            usd = monthly_cost(wider)
            message += (f"; tensor_parallel_size {2 * tp} fits" +
                        (f" and costs ${usd:,.0f}/month at 1×" if usd is not None else ""))
            ev["cost_usd_month_with_fix"] = round(usd) if usd is not None else None
        return violated(message, **ev)
    return passed(f"weights {_gib(cap.weights_bytes_per_gpu)} per GPU, KV cache {_gib(cap.kv_cache_bytes_per_gpu)} "
                  "per GPU", **ev)


@check("PERF-002", "performance", "critical", "The longest request fits in one replica's KV cache",
       rationale="""One long-tail request (say a 128k-token document) needs its whole context in KV cache at
       once. If a replica's KV cache can't hold it, that request fails or preempts everything else, however
       rare it is.""",
       remediation="""Lower model.max_model_len (and reject longer prompts), use an FP8 KV cache, add GPUs per
       replica, or route long-context requests to a dedicated pool.""",
       path="model.max_model_len")
def longest_request_fits(ctx):
    cap = ctx.capacity
    if cap is None or not cap.fits:
        return not_applicable("capacity unknown or model does not fit (see PERF-001)")
    t = s.traffic(ctx)
    candidates = []
    if ctx.d.model.max_model_len:
        candidates.append(("model.max_model_len", ctx.d.model.max_model_len))
    if t.prompt_tokens and t.output_tokens:
        candidates.append(("traffic.prompt_tokens.max", t.prompt_tokens.max + t.output_tokens.max))
    elif t.prompt_tokens:
        candidates.append(("traffic.prompt_tokens.max", t.prompt_tokens.max))
    if not candidates:
        return violated("neither model.max_model_len nor traffic.prompt_tokens.max is declared: the longest "
                        "request is unbounded", "model", warn=True)
    path, longest = max(candidates, key=lambda c: c[1])
    ev = {"longest_request_tokens": longest, "kv_tokens_per_replica": cap.kv_tokens_per_replica}
    if longest > cap.kv_tokens_per_replica:
        return violated(f"a {longest:,}-token request needs more KV cache than one replica has "
                        f"({cap.kv_tokens_per_replica:,} tokens)", path, **ev)
    return passed(f"longest request {longest:,} tokens of {cap.kv_tokens_per_replica:,} KV tokens", path, **ev)


@check("PERF-003", "performance", "high", "Latency SLOs are declared",
       rationale="""Capacity is only meaningful against a latency target: TTFT and inter-token latency p95
       decide how many requests a replica may batch.""",
       remediation="Declare slo.ttft_p95_seconds and slo.itl_p95_seconds (and availability).",
       path="slo")
def slo_declared(ctx):
    slo = s.slo(ctx)
    missing = [k for k in ("ttft_p95_seconds", "itl_p95_seconds") if getattr(slo, k) is None]
    if missing:
        return violated(f"missing SLO: {', '.join('slo.' + m for m in missing)}", missing=missing)
    return passed(f"TTFT p95 ≤ {slo.ttft_p95_seconds}s, ITL p95 ≤ {slo.itl_p95_seconds}s")


@check("PERF-004", "performance", "high", "Traffic is described (rate and token shapes)",
       rationale="""Without request rates (p50/p95/peak) and prompt/output token distributions there is no way
       to size replicas, and sizing defaults to hope.""",
       remediation="""Declare traffic.requests_per_second {p50, p95, peak}, traffic.prompt_tokens and
       traffic.output_tokens {p50, p95, max} from production logs or a replayed trace.""",
       path="traffic")
def traffic_declared(ctx):
    t = s.traffic(ctx)
    missing = [k for k in ("requests_per_second", "prompt_tokens", "output_tokens") if getattr(t, k) is None]
    if missing:
        return violated(f"missing traffic profile: {', '.join('traffic.' + m for m in missing)}", missing=missing)
    return passed("traffic profile declared")


@check("PERF-005", "performance", "high", "The SLO is feasible at today's traffic (1×)",
       rationale="""If even the declared replica count can't meet TTFT/ITL p95 at today's traffic, the
       deployment starts out of SLO.""",
       remediation="""Add replicas (hardware.replicas.max), shorten prompts with prefix caching, use a faster
       GPU or quantization, or renegotiate the SLO.""",
       path="slo")
def slo_feasible(ctx):
    point = s.growth(ctx, 1.0)
    slo = s.slo(ctx)
    if point is None or slo.ttft_p95_seconds is None or slo.itl_p95_seconds is None:
        return not_applicable("needs the capacity model, traffic and SLO")
    ev = {"ttft_p95_seconds_predicted": point.ttft_p95_seconds, "itl_p95_seconds_predicted": point.itl_p95_seconds,
          "ttft_p95_slo": slo.ttft_p95_seconds, "itl_p95_slo": slo.itl_p95_seconds,
          "replicas_needed": point.replicas_needed}
    if point.replicas_needed is None:
        return violated("no replica count meets the SLO at 1×: a single request already misses it", **ev)
    available = ctx.d.hardware.replicas.max if ctx.d.hardware.replicas else None
    if available is not None and point.replicas_needed > available:
        # Raising replicas.max to what the SLO needs, against running at most `available` replicas all day.
        from forge.hardware import get
        from forge.readiness.capacity import HOURS_PER_MONTH, price_per_gpu_hour

        extra_gpus = (point.replicas_needed - available) * ctx.d.hardware.gpus_per_replica
        usd = round(extra_gpus * price_per_gpu_hour(ctx.d, get(ctx.d.hardware.gpu)) * HOURS_PER_MONTH)
        return violated(f"1× traffic needs {point.replicas_needed} replicas to meet the SLO, replicas.max is "
                        f"{available}; raising it costs up to ${usd:,.0f}/month more", "hardware.replicas.max",
                        cost_delta_usd_month=usd, **ev)
    return passed(f"SLO met at 1× with {point.replicas_needed} replica(s)", **ev)


@check("PERF-006", "performance", "medium", "KV cache holds max_num_seqs sequences of typical size",
       rationale="""When max_num_seqs sequences of p95 length don't fit in the KV cache, vLLM preempts running
       sequences (recompute or swap) under load: latency spikes and wasted GPU time.""",
       remediation="""Lower engine.args.max_num_seqs to what the KV cache holds, or enlarge the KV cache
       (gpu_memory_utilization, FP8 KV, more GPUs per replica).""",
       path="engine.args.max_num_seqs")
def kv_holds_batch(ctx):
    cap = ctx.capacity
    max_seqs = ctx.d.engine.args.max_num_seqs
    if cap is None or not cap.fits or cap.max_concurrent_sequences is None:
        return not_applicable("needs the capacity model and a traffic shape")
    if max_seqs is None:
        return violated(f"max_num_seqs not set; the KV cache holds ~{cap.max_concurrent_sequences} p95-size "
                        "sequences", warn=True, max_concurrent_sequences=cap.max_concurrent_sequences)
    ev = {"max_num_seqs": max_seqs, "max_concurrent_sequences": cap.max_concurrent_sequences}
    if max_seqs > cap.max_concurrent_sequences:
        usd, wording = delta(ctx, {"engine.args.max_num_seqs": max(1, cap.max_concurrent_sequences)})
        message = (f"max_num_seqs {max_seqs} but the KV cache holds only {cap.max_concurrent_sequences} p95-size "
                   "sequences: expect preemptions under load")
        if wording:
            message += f"; max_num_seqs {max(1, cap.max_concurrent_sequences)} {wording}"
        return violated(message, warn=True, cost_delta_usd_month=usd, **ev)
    return passed(f"KV cache holds {cap.max_concurrent_sequences} p95-size sequences ≥ max_num_seqs", **ev)


@check("PERF-007", "performance", "medium", "Chunked prefill is on for long prompts",
       rationale="""Without chunked prefill a long prompt's prefill runs as one step and stalls every decoding
       sequence in the batch: inter-token latency spikes for everyone.""",
       remediation="Set engine.args.enable_chunked_prefill: true (and tune max_num_batched_tokens).",
       path="engine.args.enable_chunked_prefill")
def chunked_prefill(ctx):
    t = s.traffic(ctx)
    if ctx.d.engine.name != "vllm" and ctx.d.engine.name != "sglang":
        return not_applicable("engine schedules prefill its own way")
    if t.prompt_tokens is None or t.prompt_tokens.p95 < 4096:
        return not_applicable("prompts are short")
    if ctx.d.engine.args.enable_chunked_prefill is False:
        return violated(f"p95 prompt is {t.prompt_tokens.p95:,} tokens and chunked prefill is off",
                        prompt_tokens_p95=t.prompt_tokens.p95)
    return passed("chunked prefill on (or engine default)")


@check("PERF-008", "performance", "medium", "Capacity is validated by replayed load, not only predicted",
       rationale="""Models and vendor numbers are a starting point; the framework asks for capacity validated on
       realistic traffic replay.""",
       remediation="""Replay realistic traffic (`forge load run`, vllm bench serve --save-result, GuideLLM, AIPerf)
       at 1× and 3× and list the result files in evidence.load_results.""",
       path="evidence.load_results")
def load_validated(ctx):
    names = s.evidence(ctx).load_results
    if not names:
        return violated("no load test results in evidence.load_results", warn=True)
    records, errors = ctx.load_evidence
    if errors:
        return violated(f"{len(errors)} load result file(s) unreadable: {errors[0]}", errors=errors)
    outcome = passed(f"{len(records)} load result file(s): " + ", ".join(
        f"{r['source']}, {r['shape'].get('requests') or '?'} requests at "
        f"{(r.get('throughput') or {}).get('requests_per_s') or 0:.1f} req/s" for r in records), files=names)
    outcome.basis = "evidence"
    return outcome


@check("PERF-010", "performance", "high", "Measured latency under load meets the SLO",
       rationale="""A prediction that meets the SLO is a claim; a replayed load whose p95 TTFT or inter-token latency
       misses it is evidence, and evidence wins.""",
       remediation="""Add replicas or tune the engine (max_num_seqs, chunked prefill, prefix caching) until a replay at
       the declared traffic meets slo.ttft_p95_seconds and slo.itl_p95_seconds, then record the new results.""",
       path="evidence.load_results")
def measured_latency(ctx):
    slo = s.slo(ctx)
    records, _ = ctx.load_evidence
    if not records or (slo.ttft_p95_seconds is None and slo.itl_p95_seconds is None):
        return not_applicable("needs load results and a latency SLO")
    misses, measured = [], {}
    for r in records:
        pct = r["percentiles_s"]
        for signal, limit in (("ttft", slo.ttft_p95_seconds), ("itl", slo.itl_p95_seconds)):
            p95 = (pct.get(signal) or {}).get("p95")
            if limit is None or p95 is None:
                continue
            measured[f"{r['source']}:{signal}_p95_seconds"] = round(p95, 4)
            if p95 > limit:
                misses.append(f"{signal.upper()} p95 {p95:.3f}s > SLO {limit:g}s ({r['path']})")
    if not measured:
        return not_applicable("the load results report no TTFT/ITL percentiles")
    outcome = violated("measured under load: " + "; ".join(misses), **measured) if misses else \
        passed("measured p95 latency within the SLO", **measured)
    outcome.basis = "evidence"
    return outcome


GOODPUT_MIN_FRACTION = 0.95  # a p95 latency SLO lets at most 5 % of requests miss it (failed requests included)
GOODPUT_3X_FROM = 2.0        # a replay at this multiple of the declared p95 rate or more speaks for the 3× point


def _offered_rate(record: dict) -> float | None:
    """Requests per second the replay offered: the tool's configured rate, else its requests over its window."""
    shape = record.get("shape") or {}
    if shape.get("request_rate"):
        return float(shape["request_rate"])
    if shape.get("requests") and shape.get("duration_s"):
        return shape["requests"] / shape["duration_s"]
    return (record.get("throughput") or {}).get("requests_per_s")


@check("PERF-014", "performance", "high", "Goodput under load meets the SLO at the declared traffic (1×, 3×)",
       rationale="""Percentiles can meet the SLO while too many individual requests miss it: TTFT and inter-token
       latency each meet p95, yet different requests miss each, and failed requests have no latency at all.
       Goodput counts the requests that succeeded within every latency SLO (DistServe's definition, as vllm bench
       serve --goodput uses it); a p95 SLO means at least 95 % of scheduled requests must be good. At the declared
       traffic (1×) a shortfall fails; at 2× or more of it (evidence for the 3× headroom) it warns.""",
       remediation="""Add replicas or tune the engine until a replay at the declared p95 rate keeps 95 % of its
       requests within slo.ttft_p95_seconds and slo.itl_p95_seconds, then replay at 3× (`forge load run --deploy
       deploy.yaml --rate <3 × p95>`) and record both results in evidence.load_results.""",
       path="evidence.load_results")
def measured_goodput(ctx):
    from forge.load.metrics import slo_dict

    records, _ = ctx.load_evidence
    # Without records the SLO isn't read: dumping it would build the SLO model's serializer for nothing.
    thresholds = slo_dict(s.slo(ctx)) if records else {}
    if not records or not thresholds:
        return not_applicable("needs load results and a latency SLO")
    rates = s.traffic(ctx).requests_per_second
    # Only goodput measured against this deployment's own thresholds grades it (vLLM and AIPerf don't save theirs).
    graded = [r for r in records if (r.get("goodput") or {}).get("fraction") is not None
              and r["goodput"].get("slo") == thresholds]
    if not graded:
        other = [Path(r["path"]).name for r in records if r.get("goodput")]
        return not_applicable("needs load results with goodput against this deployment's SLO"
                              + (f" ({', '.join(other)}: goodput against other or unsaved thresholds)" if other else ""))
    misses_1x, misses_3x, lines, measured, reached_1x = [], [], [], {}, []
    for r in graded:
        fraction = r["goodput"]["fraction"]
        rate = _offered_rate(r)
        multiple = rate / rates.p95 if rate and rates is not None and rates.p95 else None
        where = f"{rate:.2f} req/s" if rate else "unknown rate"
        if multiple is not None:
            where += f" ({multiple:.1f}× the declared p95 rate)"
        line = f"goodput {100 * fraction:.1f} % at {where} ({Path(r['path']).name})"
        lines.append(line)
        measured[f"{Path(r['path']).name}"] = {"goodput_fraction": round(fraction, 4), "offered_rps": rate and
                                               round(rate, 3), "multiple_of_p95": multiple and round(multiple, 2),
                                               "slo": r["goodput"]["slo"]}
        if fraction < GOODPUT_MIN_FRACTION:
            (misses_3x if multiple is not None and multiple >= GOODPUT_3X_FROM else misses_1x).append(line)
        if multiple is not None:
            # A rate read off a random (Poisson) schedule of n requests scatters by about 1/√n: within two of those
            # of the declared rate, the replay was run at it.
            requests = (r.get("shape") or {}).get("requests") or 0
            estimated = any("estimated from the scheduled" in n for n in r.get("notes") or ())
            slack = 2 / math.sqrt(requests) if estimated and requests else 0.0
            reached_1x.append(multiple * (1 + slack) >= 1)
    covers_3x = any(v["multiple_of_p95"] is not None and v["multiple_of_p95"] >= GOODPUT_3X_FROM
                    for v in measured.values())
    highest = max((v["multiple_of_p95"] for v in measured.values() if v["multiple_of_p95"] is not None), default=None)
    note = ""
    if highest is not None and not any(reached_1x):
        note += f"; no replay reached the declared p95 rate (highest {highest:.1f}×) — 1× itself is not measured"
    if not covers_3x and rates is not None:
        note += (f"; no replay at {GOODPUT_3X_FROM:g}× the declared p95 rate or more — the 3× headroom rests on the "
                 "model (PERF-009)")
    if misses_1x:
        outcome = violated(f"below {100 * GOODPUT_MIN_FRACTION:g} % goodput at the declared traffic: "
                           + "; ".join(misses_1x) + note, **measured)
    elif misses_3x:
        outcome = violated(f"below {100 * GOODPUT_MIN_FRACTION:g} % goodput on the way to 3×: " + "; ".join(misses_3x),
                           warn=True, **measured)
    else:
        outcome = passed("; ".join(lines) + note, **measured)
    outcome.basis = "evidence"
    return outcome


@check("PERF-009", "performance", "high", "There is headroom for 3× traffic",
       rationale="""Traffic to LLM features grows in steps (a launch, a new client). Without room to scale to
       3× the declared traffic, growth becomes an incident.""",
       remediation="Raise hardware.replicas.max to the replicas the capacity model gives for 3× (shown here).",
       path="hardware.replicas.max")
def headroom_3x(ctx):
    point = s.growth(ctx, 3.0)
    if point is None or point.replicas_needed is None or ctx.d.hardware.replicas is None:
        return not_applicable("needs replicas, traffic, SLO and a 3× growth point")
    ev = {"replicas_max": ctx.d.hardware.replicas.max, "replicas_needed_3x": point.replicas_needed}
    if point.replicas_needed > ctx.d.hardware.replicas.max:
        # What the fleet costs once traffic is 3×, against today's 1× (the model's own figures).
        one = s.growth(ctx, 1.0)
        usd = None
        if one is not None and one.cost_per_hour is not None and point.cost_per_hour is not None:
            usd = round((point.cost_per_hour - one.cost_per_hour) * 730)
        message = (f"3× traffic needs {point.replicas_needed} replicas, replicas.max is "
                   f"{ctx.d.hardware.replicas.max}")
        if usd is not None:
            message += f"; at 3× the fleet costs ${usd:,.0f}/month more than today"
        return violated(message, warn=True, cost_delta_usd_month=usd, **ev)
    return passed("replicas.max covers 3× traffic", **ev)


@check("PERF-013", "performance", "medium", "The capacity model agrees with the replayed load (within 25 %)",
       rationale="""Replica counts, headroom and cost at 1×/3×/10× come from the capacity model. When a replay of the
       same deployment measures TTFT, ITL or throughput more than 25 % away from what the model predicts for those
       very requests, the predictions built on it can't be trusted until the model is calibrated.""",
       remediation="""Calibrate the model on the engine (`forge capacity calibrate --deploy deploy.yaml --results
       results.jsonl` prints predicted vs measured) and correct deploy.yaml (hardware, engine args, prefix hit rate)
       or the hardware catalog's efficiency figures until the gap is within 25 %.""",
       path="evidence.load_results")
def model_matches_load(ctx):
    records, _ = ctx.load_evidence
    replays = [r for r in records if r.get("source") == "forge" and str(r.get("path", "")).endswith(".jsonl")]
    if not replays or ctx.capacity is None:
        return not_applicable("needs a forge load results.jsonl (per-request records) and a capacity estimate")
    from forge.errors import InputError
    from forge.load.metrics import read_results
    from forge.readiness.capacity import calibrate

    # The replay went through the gateway to every replica: one replica saw every n-th request (the balancer spreads
    # them evenly), which is what the model's one-replica simulation is compared with.
    replicas = max(1, ctx.d.hardware.replicas.min if ctx.d.hardware.replicas else 1)
    gaps, measured = [], {}
    for rec in replays:
        try:
            requests = sorted((r for r in read_results(Path(rec["path"])) if r.get("sent_s") is not None),
                              key=lambda r: r["sent_s"])
            report = calibrate(ctx.d, requests[::replicas], ctx.base_dir)
        except InputError as exc:
            measured[rec["path"]] = exc.messages[0]
            continue
        for row in report["rows"]:
            if row["within_tolerance"] is None:
                continue
            measured[f"{row['metric']}"] = {"predicted": row["predicted"], "measured": row["measured"],
                                            "error_pct": row["error_pct"]}
            if not row["within_tolerance"]:
                gaps.append(f"{row['metric']} predicted {row['predicted']:.4g}, measured {row['measured']:.4g} "
                            f"({row['error_pct']:+.0f} %)")
    if not any(isinstance(v, dict) for v in measured.values()):
        return not_applicable("the replay holds too few successful requests to compare", **measured)
    outcome = violated("the capacity model is off by more than 25 %: " + "; ".join(gaps), warn=True,
                       replicas_split=replicas, **measured) if gaps else \
        passed("the capacity model predicts the replayed load within 25 %", replicas_split=replicas, **measured)
    outcome.basis = "evidence"
    return outcome
