"""Import load-test results as readiness evidence: one record whatever tool produced them.

Formats recognised (sources cited in tests/fixtures/load/README.md):
- Forge: ``forge load run`` results.jsonl (per request) or its --summary-json (``"format": "forge.load.summary/v1"``);
- vLLM: ``vllm bench serve --save-result`` JSON (vllm/benchmarks/serve.py: ``mean_ttft_ms``, ``p99_itl_ms``, ...);
- GuideLLM: the benchmark report benchmarks.json (GenerativeBenchmarksReport: ``{"metadata", "config", "benchmarks",
  "conclusions"}`` with metadata version 2 -- a real 0.8.1 report is a fixture --, ``{"metadata", "args",
  "benchmarks"}`` with version 1), first benchmark unless ``benchmark_index`` says otherwise;
- AIPerf: ``profile_export_aiperf.json`` (metric tags at the top level, or under ``"records"`` in older releases).

The record (times in seconds; a figure a tool does not report is None, never guessed):
``{"source", "path", "shape": {...}, "throughput": {...}, "percentiles_s": {"ttft"|"itl"|"tpot"|"e2e": {"mean",
"p50", "p90", "p95", "p99"}}, "goodput": {...} | None, "outcomes": {"ok", "failed", ...}, "notes": [...]}``.
Definitions differ between tools (notes say how): vLLM's and Forge's ITL pool every gap; GuideLLM's and AIPerf's
"inter token latency" is per request (last - first token) / (tokens - 1), which is what Forge calls TPOT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forge.errors import InputError
from forge.load.metrics import SUMMARY_FORMAT, read_results, summarize

QUANTILES = ("mean", "p50", "p90", "p95", "p99")
EVIDENCE_FORMAT = "forge.load.evidence/v1"


def _empty_percentiles() -> dict[str, float | None]:
    return dict.fromkeys(QUANTILES)


def _record(source: str, path: Path) -> dict[str, Any]:
    return {"format": EVIDENCE_FORMAT, "source": source, "path": str(path),
            "shape": {"requests": None, "duration_s": None, "request_rate": None, "arrival": None,
                      "max_concurrency": None, "prompt_tokens_mean": None, "output_tokens_mean": None},
            "throughput": {"requests_per_s": None, "input_tokens_per_s": None, "output_tokens_per_s": None},
            "percentiles_s": {m: _empty_percentiles() for m in ("ttft", "itl", "tpot", "e2e")},
            "goodput": None, "outcomes": {"ok": None, "failed": None}, "notes": []}


def _scaled(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor


# ---- Forge ----------------------------------------------------------------------------------------------------------

def _from_forge_summary(summary: dict, path: Path) -> dict[str, Any]:
    rec = _record("forge", path)
    requests = summary["requests"]
    outcomes = requests["outcomes"]
    meta = summary.get("meta") or {}
    ok = outcomes.get("ok", 0)
    rec["shape"].update(requests=requests["scheduled"], duration_s=summary.get("duration_s"),
                        request_rate=(meta.get("arrival") or {}).get("rate"),
                        arrival=(meta.get("arrival") or {}).get("kind"),
                        max_concurrency=meta.get("concurrency_limit"),
                        prompt_tokens_mean=(summary["totals"]["tokens_in"] / ok) if ok else None,
                        output_tokens_mean=(summary["totals"]["tokens_out"] / ok) if ok else None)
    rec["throughput"].update(summary["throughput"])
    for metric in ("ttft", "itl", "tpot", "e2e"):
        dist = summary["latency_s"][metric]
        rec["percentiles_s"][metric] = {q: dist.get(q) for q in QUANTILES}
    if summary.get("goodput"):
        g = summary["goodput"]
        rec["goodput"] = {"requests_per_s": g["requests_per_s"], "fraction": g["fraction_of_scheduled"],
                          "slo": g["slo"], "slo_p95_met": g.get("slo_p95_met")}
    rec["outcomes"] = {"ok": ok, "failed": requests["scheduled"] - ok, **outcomes,
                       "accounted": requests["accounted"]}
    rec["notes"].append("ITL pools every inter-token gap; TPOT is per request (e2e - ttft) / (tokens_out - 1)")
    return rec


def _from_forge_results(path: Path, slo: Any) -> dict[str, Any]:
    records = read_results(path)
    rec = _from_forge_summary(summarize(records, slo=slo), path)
    # The per-request file carries no run summary: the offered rate is estimated from the schedule itself,
    # (n - 1) arrivals over the first-to-last scheduled span.
    scheduled = sorted(r["scheduled_s"] for r in records if isinstance(r.get("scheduled_s"), (int, float)))
    if len(scheduled) >= 2 and scheduled[-1] > scheduled[0]:
        rec["shape"]["request_rate"] = (len(scheduled) - 1) / (scheduled[-1] - scheduled[0])
        rec["notes"].append("request_rate estimated from the scheduled send times")
    return rec


# ---- vLLM bench serve -----------------------------------------------------------------------------------------------

def _from_vllm(data: dict, path: Path) -> dict[str, Any]:
    rec = _record("vllm_bench_serve", path)
    completed, failed = data.get("completed"), data.get("failed")
    if failed is None and data.get("num_prompts") is not None and completed is not None:
        failed = max(0, int(data["num_prompts"]) - int(completed))
        rec["notes"].append("failed = num_prompts - completed (this vLLM release does not save 'failed')")
    rate = data.get("request_rate")
    rec["shape"].update(requests=(completed or 0) + (failed or 0), duration_s=data.get("duration"),
                        request_rate=None if rate in (None, "inf") else float(rate),
                        arrival=("all at once" if rate == "inf" else
                                 "poisson" if data.get("burstiness", 1.0) == 1.0 else
                                 f"gamma (vLLM burstiness {data.get('burstiness')})"),
                        max_concurrency=data.get("max_concurrency"),
                        prompt_tokens_mean=(data["total_input_tokens"] / completed) if completed else None,
                        output_tokens_mean=(data["total_output_tokens"] / completed) if completed else None)
    duration = data.get("duration") or 0
    rec["throughput"].update(requests_per_s=data.get("request_throughput"),
                             input_tokens_per_s=(data["total_input_tokens"] / duration) if duration else None,
                             output_tokens_per_s=data.get("output_throughput"))
    for metric, key in (("ttft", "ttft"), ("itl", "itl"), ("tpot", "tpot"), ("e2e", "e2el")):
        rec["percentiles_s"][metric] = {
            "mean": _scaled(data.get(f"mean_{key}_ms"), 1e-3),
            # vLLM saves the median always and only the percentiles asked for (--metric-percentiles, default 99).
            "p50": _scaled(data.get(f"p50_{key}_ms", data.get(f"median_{key}_ms")), 1e-3),
            **{q: _scaled(data.get(f"{q}_{key}_ms"), 1e-3) for q in ("p90", "p95", "p99")}}
    if data.get("request_goodput") is not None:
        rec["goodput"] = {"requests_per_s": data["request_goodput"],
                          "fraction": (data["request_goodput"] * duration / ((completed or 0) + (failed or 0)))
                          if duration and (completed or failed) else None,
                          "slo": None, "slo_p95_met": None}
        rec["notes"].append("vLLM does not save the --goodput SLOs in the result file")
    rec["outcomes"] = {"ok": completed, "failed": failed}
    rec["notes"].append("vLLM ITL pools every gap (as Forge); TPOT is per request (e2el - ttft)/(output_len - 1)")
    return rec


# ---- GuideLLM --------------------------------------------------------------------------------------------------------

def _guidellm_dist(metrics: dict, key: str, scale: float) -> dict[str, float | None]:
    summary = ((metrics.get(key) or {}).get("successful")) or {}
    pct = summary.get("percentiles") or {}
    return {"mean": _scaled(summary.get("mean"), scale), "p50": _scaled(pct.get("p50"), scale),
            "p90": _scaled(pct.get("p90"), scale), "p95": _scaled(pct.get("p95"), scale),
            "p99": _scaled(pct.get("p99"), scale)}


def _guidellm_max_concurrency(bench: dict) -> int | None:
    """The concurrency limit the user set. The profile holds it as given (``max_concurrency``, or ``streams`` of a
    concurrent profile); the strategy's ``max_concurrency`` is overwritten at start-up with the scheduler's resolved
    default (10240 in 0.8.1, scheduler/strategies.py ``init_processes_timings``) and is read only from reports that
    have no profile."""
    config = bench.get("config") or {}
    profile, strategy = config.get("profile"), config.get("strategy") or {}
    if isinstance(profile, dict):
        streams = profile.get("streams")
        if isinstance(streams, list):  # a concurrent profile lists one stream count per benchmark
            index = config.get("run_index") or 0
            streams = streams[index] if 0 <= index < len(streams) else None
        return profile.get("max_concurrency") or streams
    return strategy.get("max_concurrency") or strategy.get("streams")


def _from_guidellm(data: dict, path: Path, benchmark_index: int) -> dict[str, Any]:
    benchmarks = data.get("benchmarks") or []
    if not benchmarks:
        raise InputError(f"{path}: GuideLLM report has no benchmarks")
    if not 0 <= benchmark_index < len(benchmarks):
        raise InputError(f"{path}: benchmark index {benchmark_index} out of range — the report has "
                         f"{len(benchmarks)} benchmark(s) (0..{len(benchmarks) - 1})")
    bench = benchmarks[benchmark_index]
    rec = _record("guidellm", path)
    metrics = bench.get("metrics")
    if not isinstance(metrics, dict):
        raise InputError(f"{path}: GuideLLM benchmark #{benchmark_index} has no metrics")
    totals = metrics.get("request_totals") or {}
    strategy = (bench.get("config") or {}).get("strategy") or {}
    duration = bench.get("duration")
    if duration is None and bench.get("scheduler_metrics"):
        sm = bench["scheduler_metrics"]
        duration = sm["measure_end_time"] - sm["measure_start_time"]
    successful = totals.get("successful")
    # A request GuideLLM created but whose result is in no status of the report (0.8.1 can end a run with one still
    # in flight: scheduler_state processed_requests < created_requests) is a request without an outcome: failed.
    created = (bench.get("scheduler_state") or {}).get("created_requests")
    unaccounted = max(0, created - (totals.get("total") or 0)) if isinstance(created, int) else 0
    rec["shape"].update(requests=(totals.get("total") or 0) + unaccounted if totals else None, duration_s=duration,
                        request_rate=strategy.get("rate"), arrival=strategy.get("type_"),
                        max_concurrency=_guidellm_max_concurrency(bench),
                        prompt_tokens_mean=((metrics.get("prompt_token_count") or {}).get("successful") or {}).get("mean"),
                        output_tokens_mean=((metrics.get("output_token_count") or {}).get("successful") or {}).get("mean"))

    def mean_rate(key: str) -> float | None:
        return ((metrics.get(key) or {}).get("successful") or {}).get("mean")

    rec["throughput"].update(requests_per_s=mean_rate("requests_per_second"),
                             input_tokens_per_s=mean_rate("prompt_tokens_per_second"),
                             output_tokens_per_s=mean_rate("output_tokens_per_second"))
    rec["percentiles_s"]["ttft"] = _guidellm_dist(metrics, "time_to_first_token_ms", 1e-3)
    # GuideLLM's inter_token_latency_ms is per request (last - first token)/(tokens - 1), weighted by tokens - 1: TPOT.
    rec["percentiles_s"]["tpot"] = _guidellm_dist(metrics, "inter_token_latency_ms", 1e-3)
    rec["percentiles_s"]["e2e"] = _guidellm_dist(metrics, "request_latency", 1.0)
    # Goodput (0.8: metrics.slo_attainment and request_goodput, present when the run set --metrics slo=...).
    if metrics.get("slo_attainment") is not None:
        rec["goodput"] = {"requests_per_s": mean_rate("request_goodput"), "fraction": metrics["slo_attainment"],
                          "slo": (bench.get("config") or {}).get("slo"), "slo_p95_met": None}
    rec["outcomes"] = {"ok": successful,
                       "failed": (totals.get("incomplete") or 0) + (totals.get("errored") or 0) + unaccounted,
                       "incomplete": totals.get("incomplete"), "errored": totals.get("errored"),
                       "unaccounted": unaccounted}
    if unaccounted:
        rec["notes"].append(f"GuideLLM created {created} requests; its report holds {totals.get('total')}: the other "
                            f"{unaccounted} count as failed (no outcome recorded)")
    rec["notes"].append("GuideLLM reports no pooled ITL; its inter_token_latency_ms (per request) maps to TPOT")
    if (bench.get("config") or {}).get("prefer_response_metrics"):
        rec["notes"].append("GuideLLM token counts are the server's usage figures where it reports them "
                            "(prefer_response_metrics)")
    if len(benchmarks) > 1:
        rec["notes"].append(f"report holds {len(benchmarks)} benchmarks; this record is #{benchmark_index}")
    return rec


# ---- AIPerf ---------------------------------------------------------------------------------------------------------

UNIT_SECONDS = {"ms": 1e-3, "sec": 1.0, "s": 1.0, "us": 1e-6, "ns": 1e-9}


def _from_aiperf(data: dict, path: Path) -> dict[str, Any]:
    metrics = data.get("records") if isinstance(data.get("records"), dict) else data
    rec = _record("aiperf", path)

    def metric(*tags: str) -> dict | None:
        for tag in tags:
            if isinstance(metrics.get(tag), dict) and "unit" in metrics[tag]:
                return metrics[tag]
        return None

    def scalar(*tags: str) -> float | None:
        found = metric(*tags)
        return None if found is None else found.get("avg")

    def dist(*tags: str) -> dict[str, float | None]:
        found = metric(*tags)
        if found is None:
            return _empty_percentiles()
        scale = UNIT_SECONDS.get(found["unit"], 1.0)
        return {"mean": _scaled(found.get("avg"), scale),
                **{q: _scaled(found.get(q), scale) for q in ("p50", "p90", "p95", "p99")}}

    ok = scalar("request_count")
    errors = scalar("error_request_count") or 0
    duration = scalar("benchmark_duration")
    loadgen = ((data.get("input_config") or {}).get("loadgen")) or {}
    rec["shape"].update(requests=(ok or 0) + errors if ok is not None else None, duration_s=duration,
                        request_rate=loadgen.get("request_rate"),
                        arrival=loadgen.get("request_rate_mode") or loadgen.get("arrival_pattern"),
                        max_concurrency=loadgen.get("concurrency"),
                        prompt_tokens_mean=scalar("input_sequence_length"),
                        output_tokens_mean=scalar("output_sequence_length"))
    total_isl = scalar("total_isl")
    rec["throughput"].update(requests_per_s=scalar("request_throughput"),
                             input_tokens_per_s=(total_isl / duration) if total_isl is not None and duration else None,
                             output_tokens_per_s=scalar("output_token_throughput"))
    rec["percentiles_s"]["ttft"] = dist("time_to_first_token", "ttft")
    # AIPerf's inter_token_latency is per request (latency - ttft)/(osl - 1): Forge's TPOT. Its inter_chunk_latency
    # pools every gap between stream chunks: Forge's ITL.
    rec["percentiles_s"]["tpot"] = dist("inter_token_latency")
    rec["percentiles_s"]["itl"] = dist("inter_chunk_latency")
    rec["percentiles_s"]["e2e"] = dist("request_latency")
    goodput = scalar("goodput")
    if goodput is not None:
        good = scalar("good_request_count")
        rec["goodput"] = {"requests_per_s": goodput,
                          "fraction": (good / ((ok or 0) + errors)) if good is not None and (ok or errors) else None,
                          "slo": None, "slo_p95_met": None}
    rec["outcomes"] = {"ok": ok, "failed": errors,
                       "errors": [{"code": e.get("error_details", {}).get("code"),
                                   "type": e.get("error_details", {}).get("type"), "count": e.get("count")}
                                  for e in data.get("error_summary") or []]}
    rec["notes"].append("AIPerf inter_token_latency is per request (Forge's TPOT); inter_chunk_latency is pooled ITL")
    return rec


# ---- dispatch -------------------------------------------------------------------------------------------------------

def detect_format(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if data.get("format") == SUMMARY_FORMAT:
        return "forge_summary"
    if isinstance(data.get("benchmarks"), list) and (
            "args" in data  # report metadata version 1
            or (data.get("metadata") or {}).get("guidellm_version") is not None
            or any(isinstance(b, dict) and b.get("type_") == "generative_benchmark" for b in data["benchmarks"])):
        return "guidellm"
    if "aiperf_version" in data or "input_config" in data or (
            isinstance(data.get("records"), dict) and "request_throughput" in data["records"]):
        return "aiperf"
    if "request_throughput" in data and "completed" in data and any(k.endswith("_ttft_ms") for k in data):
        return "vllm"
    return None


def load_evidence(path: str | Path, *, slo: Any = None, benchmark_index: int = 0) -> dict[str, Any]:
    """Normalize one results file into the evidence record. ``slo`` (forge.schema.SLO or dict) applies to Forge's
    per-request results, the only format from which goodput can be recomputed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file — give a results file of forge load, vllm bench serve, "
                         "GuideLLM or AIPerf")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            is_forge_line = isinstance(json.loads(first), dict) and "outcome" in json.loads(first)
        except json.JSONDecodeError:
            is_forge_line = False
        if is_forge_line:
            return _from_forge_results(path, slo)
        raise InputError(f"{path}: neither JSON nor a forge load results.jsonl — give a results file of forge load, "
                         "vllm bench serve --save-result, GuideLLM or AIPerf") from None
    if isinstance(data, dict) and "outcome" in data and "index" in data:
        return _from_forge_results(path, slo)  # a results.jsonl of a single request
    kind = detect_format(data)
    if kind == "forge_summary":
        return _from_forge_summary(data, path)
    if kind == "vllm":
        return _from_vllm(data, path)
    if kind == "guidellm":
        return _from_guidellm(data, path, benchmark_index)
    if kind == "aiperf":
        return _from_aiperf(data, path)
    raise InputError(f"{path}: unrecognised results format — expected forge load results/summary, "
                     "vllm bench serve --save-result JSON, a GuideLLM benchmark report or AIPerf "
                     "profile_export_aiperf.json")
