"""Live evidence from Prometheus (`--prometheus URL` or evidence.prometheus_url): what the running deployment shows,
checked against what deploy.yaml claims. Without a URL every check here is not_applicable.

Evidence beats a claim: where deploy.yaml claims something (signals collected, alerts in place, a prefix-cache hit
rate) and the live data says otherwise, the finding says so in words ("deploy.yaml claims …, but Prometheus …").
The numbers come from readiness/evidence_prometheus.py; each item there may carry `error` (the query failed: a
warning, since nothing was measured) or `missing` (no series: a finding of its own).
"""

from __future__ import annotations

from typing import Any

from forge.readiness.checks import _sections as s
from forge.readiness.registry import Outcome, check, not_applicable, passed, violated

PATH = "evidence.prometheus_url"
NO_URL = "no Prometheus to read live evidence from (--prometheus URL or evidence.prometheus_url)"
# PERF-012: below this share of the claimed rate the claim fails (the same factor as the ForgePrefixCacheHitRatioDrop
# and ForgeSpecAcceptanceCollapse alerts); below the claim by more than WARN_MARGIN it warns.
CLAIM_FAIL_FACTOR = 0.5
CLAIM_WARN_MARGIN = 0.10


def _evidence(outcome: Outcome) -> Outcome:
    outcome.basis = "evidence"
    return outcome


def _could_not(what: str, item: dict[str, Any]) -> Outcome:
    """The query for this item failed: nothing was measured, so a warning naming the reason."""
    return _evidence(violated(f"could not read {what} from Prometheus: {item['error']}", warn=True,
                              prometheus_error=item["error"]))


def _live(ctx) -> dict[str, Any] | None:
    return ctx.prometheus_evidence


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------- OBS-012

@check("OBS-012", "observability", "high", "Live: the deployment's scrape targets are up and fresh",
       rationale="""Dashboards, alerts and every other live check read what Prometheus scraped. A target that is
       down or stale leaves them blind exactly where it matters, and a replica the exporter can't reach is a replica
       nobody watches.""",
       remediation="""Fix the failing targets (`lastError` in Prometheus' /targets page names the cause): the engine
       or the Forge exporter is down, its port is wrong, or the scrape times out. Make sure the exporter labels the
       deployment's series with model=<model.name>.""",
       path=PATH)
def live_targets(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    item = ev["targets"]
    if "error" in item:
        return _could_not("the scrape targets", item)
    rows = item["targets"]
    serving = [r for r in rows if r.get("serves_deployment")]
    bad_serving = [r for r in serving if r["health"] != "up" or r["stale"]]
    other_down = [r for r in rows if not r.get("serves_deployment") and r["health"] != "up"]
    numbers = {"targets": len(rows), "targets_serving_deployment": len(serving),
               "targets_down": [f"{r['job']}/{r['instance']}: {r['last_error'] or r['health']}"
                                for r in rows if r["health"] != "up"],
               "replicas_down": item["replicas_down"], "selector": item.get("selector")}
    problems = []
    if not serving:
        claim = (" deploy.yaml claims observability.engine_metrics: true (OBS-001), but" if
                 s.observability(ctx).engine_metrics else "")
        problems.append(f"{claim} no scrape target of this Prometheus serves series with {item.get('selector')} "
                        f"in the last {ev['window']}".strip())
    if bad_serving:
        problems.append("target(s) serving the deployment down or stale: " + _names(
            [f"{r['job']}/{r['instance']} ({r['last_error'] or r['health']}"
             + (f", last scrape {r['last_scrape_age_s']:.0f} s ago" if r["last_scrape_age_s"] is not None else "")
             + ")" for r in bad_serving]))
    if item["replicas_down"]:
        problems.append(f"the Forge exporter can't scrape replica(s) {_names(item['replicas_down'])} "
                        f"(forge_engine_up 0)")
    if problems:
        return _evidence(violated("; ".join(problems), **numbers))
    if other_down:
        return _evidence(violated(f"{len(serving)} target(s) serving the deployment are up; other target(s) of "
                                  f"this Prometheus are down: {_names(numbers['targets_down'])}", warn=True,
                                  **numbers))
    freshest = max((r["last_scrape_age_s"] or 0) for r in serving)
    return _evidence(passed(f"{len(rows)} target(s) up, {len(serving)} serving {item.get('selector')}, every "
                            f"last scrape within {freshest:.0f} s", **numbers))


# ----------------------------------------------------------------------------------------------- OBS-013

@check("OBS-013", "observability", "high", "Live: Forge's recording and alerting rules are loaded in Prometheus",
       rationale="""Alerts written in a repository page nobody until Prometheus loads them. A rule file that was
       never deployed, was generated for other SLOs, or fails to evaluate leaves the deployment unwatched while
       its YAML claims otherwise.""",
       remediation="""Generate the rules for this deployment (`forge alerts build --deploy deploy.yaml`), add the file
       to Prometheus' rule_files and reload Prometheus; fix rules Prometheus reports in error.""",
       path=PATH)
def live_rules(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    item = ev["rules"]
    if "error" in item:
        return _could_not("the loaded rules", item)
    loaded = set(item["loaded_alert_names"])
    claimed = [a if isinstance(a, str) else a.name for a in s.observability(ctx).alerts]
    claimed_missing = [a for a in claimed if a not in loaded]
    numbers = {k: item[k] for k in ("alerts_expected", "alerts_missing", "records_expected", "records_missing",
                                    "groups_found", "differs_from_generated", "unhealthy", "loaded_rules")}
    numbers["alerts_found"] = len(item["alerts_found"])
    numbers["claimed_alerts_not_loaded"] = claimed_missing
    problems = []
    if claimed_missing:
        problems.append(f"deploy.yaml claims alert(s) {_names(claimed_missing)} (observability.alerts, OBS-007/008), "
                        "but Prometheus has no such rule loaded")
    hung = "ForgeEngineHung"
    if s.reliability(ctx).liveness and s.reliability(ctx).liveness.watchdog_enabled and hung not in loaded:
        problems.append(f"deploy.yaml claims a progress watchdog (REL-004), but Prometheus has no hung-engine alert "
                        f"({hung}) loaded to back it")
    if item["alerts_missing"]:
        problems.append(f"{len(item['alerts_missing'])} of {item['alerts_expected']} alert(s) Forge generates for this "
                        f"deploy.yaml are not loaded: {_names(item['alerts_missing'])}")
    if item["records_missing"]:
        problems.append(f"{len(item['records_missing'])} of {item['records_expected']} recording rule(s) the alerts "
                        f"read are not loaded: {_names(item['records_missing'], 3)}")
    if item["unhealthy"]:
        problems.append("rule(s) failing to evaluate: " + _names(
            [f"{r['name']} ({r['error'] or r['health']})" for r in item["unhealthy"]], 3))
    if problems:
        return _evidence(violated("; ".join(problems), **numbers))
    if item["differs_from_generated"]:
        return _evidence(violated(
            f"all {item['alerts_expected']} Forge alerts are loaded, but {len(item['differs_from_generated'])} rule(s) "
            f"differ from what Forge generates for this deploy.yaml (other SLOs or an older Forge): "
            f"{_names(item['differs_from_generated'], 3)} — regenerate with `forge alerts build --deploy`", warn=True,
            **numbers))
    return _evidence(passed(f"all {item['alerts_expected']} alerts and {item['records_expected']} recording rules "
                            f"Forge generates for this deploy.yaml are loaded and healthy", **numbers))


# ----------------------------------------------------------------------------------------------- OBS-014

@check("OBS-014", "observability", "high", "Live: every catalog signal the deployment needs has series",
       rationale="""Listing a signal in deploy.yaml doesn't make it exist. A signal with no live series means an
       empty dashboard panel and an alert that can never fire — typically an exporter that isn't running, a model
       label that doesn't match, or an engine version with other metric names.""",
       remediation="""Run the Forge exporter against every replica (`forge exporter run --deploy deploy.yaml`) so the
       canonical series exist with model=<model.name>; `forge exporter check URL` shows which signals an engine
       provides.""",
       path=PATH)
def live_signals(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    item = ev["signals"]
    if "error" in item:
        return _could_not("the signal series", item)
    rows = item["needed"]
    numbers = {"selector": item["selector"], "present": item["present"], "native_only": item["native_only"],
               "missing": item["missing"], "unknown": item["unknown"], "other_models": item.get("other_models", [])}
    missing = [r for r in rows if r["state"] == "missing"]
    if missing:
        declared = [r["signal"] for r in missing if r["declared"]]
        parts = [f"no live series for {item['selector']} of {_names([r['signal'] + ' (' + r['why'] + ')' for r in missing])}"]
        if declared:
            parts.append(f"deploy.yaml claims {_names(declared)} collected (observability.signals), but Prometheus "
                         "has no series of them")
        if item.get("other_models"):
            parts.append(f"Prometheus has engine series for model(s) {_names(item['other_models'])}: does model.name "
                         "match the model label the exporter sets?")
        return _evidence(violated("; ".join(parts), **numbers))
    if item["native_only"] or item["unknown"]:
        parts = []
        if item["native_only"]:
            parts.append(f"{_names(item['native_only'])} exist only under the engine's own names: dashboards and "
                         "alerts read the canonical ones (is the Forge exporter running?)")
        if item["unknown"]:
            parts.append(f"could not query {_names(item['unknown'])}: {next(r['error'] for r in rows if r['state'] == 'unknown')}")
        return _evidence(violated("; ".join(parts), warn=True, **numbers))
    lacks = item.get("engine_lacks", [])
    have = len(rows) - len(lacks)
    note = f"; {_names(lacks)} not exported by {ctx.d.engine.name} at all (catalog)" if lacks else ""
    return _evidence(passed(f"all {have} needed signals the engine exports have live series for {item['selector']}"
                            + note, **numbers, engine_lacks=lacks))


# ----------------------------------------------------------------------------------------------- PERF-011

@check("PERF-011", "performance", "critical", "Live: TTFT and ITL p95 over the window meet the SLO",
       rationale="""The capacity model and a load test predict; the deployment's own histograms measure what users
       got. A p95 over the SLO on live traffic is a deployment missing its promise now, whatever the YAML
       predicts.""",
       remediation="""Add replicas or tune the engine (max_num_seqs, chunked prefill, prefix caching) until the live
       p95 is back under slo.ttft_p95_seconds / slo.itl_p95_seconds; if the SLO itself is wrong, renegotiate it and
       regenerate the alerts.""",
       path="slo")
def live_latency(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    slo = s.slo(ctx)
    limits = {"ttft": slo.ttft_p95_seconds, "itl": slo.itl_p95_seconds}
    if all(v is None for v in limits.values()):
        return not_applicable("no latency SLO declared (see PERF-003)")
    point = s.growth(ctx, 1.0)
    predicted = {"ttft": point.ttft_p95_seconds if point else None, "itl": point.itl_p95_seconds if point else None}
    numbers: dict[str, Any] = {"window": ev["window"]}
    misses, unmeasured, met = [], [], []
    for key, limit in limits.items():
        if limit is None:
            continue
        item = ev["latency"][key]
        numbers[f"{key}_p95_slo_seconds"] = limit
        if "error" in item:
            unmeasured.append(f"{key.upper()}: query failed ({item['error']})")
            continue
        if item.get("missing") or not item["observations"]:
            unmeasured.append(f"{key.upper()}: " + (item.get("missing") or f"no requests in the last {ev['window']}"))
            continue
        p95 = item["p95_seconds"]
        numbers[f"{key}_p95_seconds_measured"] = p95
        numbers[f"{key}_observations"] = item["observations"]
        numbers[f"{key}_series"] = item["series"]
        if p95 is None:
            unmeasured.append(f"{key.upper()}: histogram_quantile gave no number")
        elif p95 > limit:
            claim = ""
            if predicted[key] is not None and predicted[key] <= limit:
                claim = f"; the capacity model predicts {predicted[key]:.3g} s (PERF-005): evidence wins"
            misses.append(f"{key.upper()} p95 {p95:.3g} s > SLO {limit:g} s over the last {ev['window']} "
                          f"(≈{item['observations']} {'requests' if key == 'ttft' else 'token gaps'}){claim}")
        else:
            met.append(f"{key.upper()} p95 {p95:.3g} s ≤ {limit:g} s")
    if misses:
        return _evidence(violated("live SLO missed: " + "; ".join(misses), **numbers))
    if unmeasured:
        return _evidence(violated("live latency not measured — " + "; ".join(unmeasured)
                                  + (f" ({'; '.join(met)})" if met else ""), warn=True, **numbers))
    return _evidence(passed(f"live over the last {ev['window']}: " + ", ".join(met), **numbers))


# ----------------------------------------------------------------------------------------------- REL-011

@check("REL-011", "reliability", "high", "Live: availability over the window meets the SLO",
       rationale="""The success ratio the engines report is the availability users got; below the SLO the error
       budget is burning now, whatever the failure-mode analysis in the YAML says.""",
       remediation="""Find the failing requests' reason (forge_requests_total{outcome="error"} by reason and replica),
       fix or drain the replica behind them, and keep the availability burn alerts loaded (OBS-013).""",
       path="slo.availability")
def live_availability(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    target = s.slo(ctx).availability
    if target is None:
        return not_applicable("no availability SLO declared")
    item = ev["availability"]
    if "error" in item:
        return _could_not("the request outcomes", item)
    numbers = {"availability_slo": target, "window": ev["window"], "requests": item["requests"],
               "errors": item["errors"], "success_ratio": item["success_ratio"]}
    if item.get("missing") or item["success_ratio"] is None:
        return _evidence(violated("availability not measured — " + (item.get("missing") or
                                                                     f"no finished requests in the last {ev['window']}"),
                                  warn=True, **numbers))
    ratio = item["success_ratio"]
    # increase() extrapolates to the window's edges: the counts are approximate, their ratio is not.
    text = (f"{ratio:.4%} of ≈{item['requests']} finished request(s) succeeded over the last {ev['window']} "
            f"(≈{item['errors']} server error(s))")
    if ratio < target:
        return _evidence(violated(f"live availability below the SLO: {text}, SLO {target:.4%}", **numbers))
    return _evidence(passed(f"{text}, SLO {target:.4%}", **numbers))


# ----------------------------------------------------------------------------------------------- PERF-012

def _compare_claim(what: str, claimed: float | None, item: dict[str, Any], window: str) -> tuple[str, str]:
    """(status, sentence) for one claimed rate against its measured value."""
    if "error" in item:
        return "warn", f"{what}: query failed ({item['error']})"
    measured = item["value"]
    if claimed is None:
        if measured is None:
            return "pass", f"{what}: nothing claimed, nothing measured"
        return "pass", f"{what} measured {measured:.1%} (no rate claimed in deploy.yaml)"
    if measured is None:
        why = "no series" if not item["series"] else f"no traffic in the last {window}"
        return "warn", f"deploy.yaml claims {what} {claimed:.0%}, not measured live ({why})"
    if measured < CLAIM_FAIL_FACTOR * claimed:
        return "fail", (f"deploy.yaml claims {what} {claimed:.0%}, but the live {what} over the last {window} is "
                        f"{measured:.1%} — under half the claim the capacity model sized for")
    if measured < claimed - CLAIM_WARN_MARGIN:
        return "warn", f"deploy.yaml claims {what} {claimed:.0%}, the live {what} is lower: {measured:.1%}"
    return "pass", f"{what} {measured:.1%} live vs {claimed:.0%} claimed"


@check("PERF-012", "performance", "medium", "Live: prefix-cache hit ratio and speculative acceptance match the claims",
       rationale="""The capacity model takes deploy.yaml's prefix-cache hit rate and expected draft acceptance at
       their word: they cut prefill work and decode steps. When live traffic hits the cache less or accepts fewer
       drafts, the sizing built on them is wrong.""",
       remediation="""Correct traffic.prefix_cache_hit_rate / speculative_config.expected_acceptance_rate to what
       Prometheus measures and re-run the capacity plan, or restore the prompt layout (shared prefixes first) /
       the draft model that earned the claimed rate.""",
       path="traffic.prefix_cache_hit_rate")
def live_claimed_rates(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    args = ctx.d.engine.args
    claimed_prefix = s.traffic(ctx).prefix_cache_hit_rate
    spec = args.speculative_config
    results: list[tuple[str, str, str]] = []     # (status, sentence, deploy.yaml path it is about)
    numbers: dict[str, Any] = {"window": ev["window"]}
    if claimed_prefix is not None or args.enable_prefix_caching:
        item = ev["prefix_cache"]
        numbers["prefix_cache_hit_ratio_claimed"] = claimed_prefix
        numbers["prefix_cache_hit_ratio_measured"] = item.get("value")
        results.append((*_compare_claim("prefix-cache hit ratio", claimed_prefix, item, ev["window"]),
                        "traffic.prefix_cache_hit_rate"))
    if spec is not None:
        item = ev["spec_decode"]
        numbers["spec_acceptance_rate_claimed"] = spec.expected_acceptance_rate
        numbers["spec_acceptance_rate_measured"] = item.get("value")
        results.append((*_compare_claim("speculative acceptance rate", spec.expected_acceptance_rate, item,
                                        ev["window"]), "engine.args.speculative_config"))
    if not results:
        return not_applicable("no prefix caching and no speculative decoding")
    rank = {"pass": 0, "warn": 1, "fail": 2}
    worst = max(results, key=lambda r: rank[r[0]])
    text = "; ".join(r[1] for r in results)
    if worst[0] == "pass":
        outcome = passed(text, worst[2], **numbers)
    else:
        outcome = violated(text, worst[2], warn=worst[0] == "warn", **numbers)
    return _evidence(outcome)


# ----------------------------------------------------------------------------------------------- OBS-015

@check("OBS-015", "observability", "high", "Live: GPU health is clean (no XID, no uncorrectable ECC)",
       rationale="""An XID or an uncorrectable ECC error means a GPU that returns wrong results or is about to drop
       out; a deployment serving from it is not healthy whatever its configuration says.""",
       remediation="""Drain the node of the GPU named, reset or replace the GPU (see runbooks/ForgeGPUXidCritical.md
       and ForgeGPUEccUncorrectable.md), and run dcgm-exporter with the ECC fields enabled so the next one shows.""",
       path="observability.gpu_metrics")
def live_gpu_health(ctx):
    ev = _live(ctx)
    if ev is None:
        return not_applicable(NO_URL)
    item = ev["gpu"]
    if "error" in item:
        return _could_not("the GPU series", item)
    cpu = ctx.d.hardware.gpu == "CPU"
    numbers = {"window": ev["window"], "gpu_series": item["gpu_series"], "xid": item["xid"],
               "ecc_uncorrectable": item["ecc_uncorrectable"], "rows_remapped": item["rows_remapped"]}
    if not item["gpu_series"]:
        if cpu:
            return not_applicable("CPU deployment and no GPU series")
        claim = s.observability(ctx).gpu_metrics
        said = (f"deploy.yaml claims GPU metrics from {claim} (OBS-006), but " if claim != "none" else "")
        return _evidence(violated(f"{said}Prometheus has no {item['signals'][0]} series in the last {ev['window']}: "
                                  "GPU health is not observed", **numbers))
    problems = []
    if item["xid"]:
        problems.append("XID error(s) " + _names(sorted({f"{x['xid']} on GPU {x['gpu']} {x['host']}".strip()
                                                          for x in item["xid"]})))
    if item["ecc_uncorrectable"]:
        problems.append("uncorrectable ECC error(s) on " + _names(sorted({f"GPU {x['gpu']} {x['host']}".strip()
                                                                           for x in item["ecc_uncorrectable"]})))
    if item["rows_remapped"]:
        problems.append("memory rows remapped for uncorrectable errors on " + _names(
            sorted({f"GPU {x['gpu']} {x['host']}".strip() for x in item["rows_remapped"]})))
    if problems:
        return _evidence(violated(f"in the last {ev['window']}: " + "; ".join(problems), **numbers))
    if not item["ecc_series"] and not cpu:
        return _evidence(violated(f"no XID on {item['gpu_series']} GPU series, but no ECC series either (dcgm-exporter's "
                                  "default counters omit them): uncorrectable memory errors would not show",
                                  warn=True, **numbers))
    return _evidence(passed(f"{item['gpu_series']} GPU series, no XID and no uncorrectable ECC error in the last "
                            f"{ev['window']}", **numbers))
