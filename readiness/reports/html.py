"""One self-contained HTML page per run: inline CSS and SVG, no scripts, no fonts, nothing fetched.

Python computes the view (ordering, chart geometry); `readiness/templates/report.html.j2` lays it out with
Jinja2 autoescaping, so every piece of user-provided text is escaped.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

from forge.readiness.reports._common import (
    BASELINE_SECTIONS,
    STATUS_LABEL,
    VERDICT_LABEL,
    baseline_headline,
    baseline_origin,
    dimension_name,
    quiet_checks_note,
    evidence_text,
    failing_dimensions,
    open_findings,
    signed,
    sorted_findings,
    status_counts,
    status_word,
    waiver_text,
)
from forge.readiness.result import DIMENSIONS, GATING_DIMENSIONS, Assessment, Finding

# Chart geometry (SVG user units; the SVG scales to its container).
DIM_CHART_W, DIM_ROW_H, DIM_LABEL_W, DIM_BAR_W = 720, 34, 250, 380
CAP_CHART_W, CAP_CHART_H = 720, 400
CAP_PAD = {"left": 56, "right": 72, "top": 44, "bottom": 52}

# What the capacity summary shows, in this order, when the key is there: (key, label, format).
CAPACITY_FACTS: tuple[tuple[str, str, str], ...] = (
    ("gpu", "GPU", "text"),
    ("gpus_per_replica", "GPUs per replica", "int"),
    ("tensor_parallel_size", "Tensor parallel size", "int"),
    ("weights_dtype", "Weights dtype", "text"),
    ("kv_cache_dtype", "KV cache dtype", "text"),
    ("weights_bytes_per_gpu", "Weights per GPU", "bytes"),
    ("kv_cache_bytes_per_gpu", "KV cache per GPU", "bytes"),
    ("kv_tokens_per_replica", "KV cache tokens per replica", "int"),
    ("max_concurrent_sequences", "Max concurrent sequences", "int"),
    ("max_context_tokens_fit", "Longest context that fits", "int"),
    ("max_requests_per_second_per_replica", "Max requests/s per replica", "float"),
    ("ttft_p50_seconds", "Predicted TTFT p50", "seconds"),
    ("itl_p50_seconds", "Predicted ITL p50", "seconds"),
)
# Growth table columns: (key, label, format).
GROWTH_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("multiplier", "Traffic", "multiplier"),
    ("requests_per_second", "Requests/s", "float"),
    ("replicas_needed", "Replicas needed", "int"),
    ("replicas_with_headroom", "With N+1 headroom", "int"),
    ("utilization", "Utilization", "percent"),
    ("ttft_p95_seconds", "TTFT p95", "seconds"),
    ("itl_p95_seconds", "ITL p95", "seconds"),
    ("cost_per_hour", "Cost / hour", "money"),
    ("cost_per_million_output_tokens", "$ / M output tokens", "money"),
    ("idle_gpu_hours_per_day", "Idle GPU-h / day", "float"),
)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def fmt_value(v: Any, kind: str) -> str:
    """A capacity figure for people: 460,208 tokens, 33.9 GiB, 116 ms, $38.18, 3×."""
    n = _num(v)
    if v is None:
        return "—"
    if n is None:
        return evidence_text(v)
    if kind == "int":
        return f"{n:,.0f}"
    if kind == "bytes":
        return f"{n / 2**30:,.1f} GiB"
    if kind == "seconds":
        return f"{n * 1000:,.0f} ms" if n < 1 else f"{n:,.2f} s"
    if kind == "percent":
        return f"{n * 100:.0f}%"
    if kind == "money":
        return f"${n:,.2f}" if n >= 0.1 else f"${n:,.4f}"
    if kind == "multiplier":
        return f"{n:g}×"
    return f"{n:,.2f}" if abs(n) < 100 else f"{n:,.0f}"


def _nice_max(v: float) -> float:
    """A round axis maximum at or above v (1, 2, 2.5, 5 × 10^k)."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= v:
            return step * exp
    return 10 * exp


# ------------------------------------------------------------------------------------------------------ views
def _finding_view(a: Assessment, f: Finding) -> dict[str, Any]:
    return {
        "f": f,
        "anchor": f"{f.check}",
        "status_label": STATUS_LABEL.get(f.status, f.status),
        "evidence": [(str(k), evidence_text(v)) for k, v in (f.evidence or {}).items()],
        "waiver": waiver_text(f) if f.status == "waived" else "",
        "where": f"{a.file}:{f.line}",
    }


def _dimension_chart(a: Assessment) -> dict[str, Any]:
    rows = []
    for i, d in enumerate(a.dimensions):
        score = max(0, min(100, int(d.score)))
        rows.append({
            "d": d, "y": 8 + i * DIM_ROW_H, "w": round(DIM_BAR_W * score / 100, 1), "score": score,
            "gating": d.id in GATING_DIMENSIONS,
        })
    height = 8 + len(rows) * DIM_ROW_H + 22
    x0 = DIM_LABEL_W
    return {
        "rows": rows, "width": DIM_CHART_W, "height": height, "x0": x0, "bar_w": DIM_BAR_W, "row_h": DIM_ROW_H,
        # Dimension status thresholds of the scorer (fail below 60, warn below 85).
        "ticks": [{"x": x0 + DIM_BAR_W * t / 100, "label": str(t)} for t in (0, 60, 85, 100)],
        "axis_y": height - 20,
    }


def _groups(a: Assessment) -> list[dict[str, Any]]:
    by_dim: dict[str, list[Finding]] = {}
    for f in a.findings:
        by_dim.setdefault(f.dimension, []).append(f)
    order = list(DIMENSIONS) + sorted(d for d in by_dim if d not in DIMENSIONS)
    scores = {d.id: d for d in a.dimensions}
    groups = []
    for dim in order:
        found = sorted_findings(by_dim.get(dim, []))
        if not found and dim not in scores:
            continue
        part = {s: [_finding_view(a, f) for f in found if f.status == s]
                for s in ("fail", "warn", "waived", "pass", "not_applicable")}
        ds = scores.get(dim)
        groups.append({
            "id": dim, "name": dimension_name(dim), "gating": dim in GATING_DIMENSIONS,
            "score": ds.score if ds else None, "status": ds.status if ds else "pass",
            "open": part["fail"] + part["warn"], "waived": part["waived"],
            "passed": part["pass"] + part["not_applicable"],
            "n_pass": len(part["pass"]), "n_na": len(part["not_applicable"]),
        })
    return groups


def _capacity_view(cap: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(cap, dict) or not cap:
        return None
    facts = [(label, fmt_value(cap[key], kind)) for key, label, kind in CAPACITY_FACTS if key in cap]
    fits = cap.get("fits")
    growth = [g for g in cap.get("growth") or [] if isinstance(g, dict)]
    columns = [(key, label, kind) for key, label, kind in GROWTH_COLUMNS if any(key in g for g in growth)]
    rows = [[fmt_value(g.get(key), kind) for key, _, kind in columns] for g in growth]
    notes = [evidence_text(n) for n in cap.get("notes") or []] if isinstance(cap.get("notes"), list) else []
    return {
        "facts": facts, "fits": fits if isinstance(fits, bool) else None,
        "fit_reason": evidence_text(cap["fit_reason"]) if cap.get("fit_reason") else "",
        "columns": [label for _, label, _ in columns], "rows": rows, "notes": notes,
        "chart": _capacity_chart(growth),
    }


def _capacity_chart(growth: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Bars: replicas (needed, and with headroom) per traffic multiplier; line: cost per hour on the right axis."""
    points = []
    for g in growth:
        mult = _num(g.get("multiplier"))
        need = _num(g.get("replicas_needed"))
        head = _num(g.get("replicas_with_headroom"))
        cost = _num(g.get("cost_per_hour"))
        if mult is None or (need is None and head is None and cost is None):
            continue
        points.append((mult, need, head, cost))
    if not points:
        return None
    w, h, pad = CAP_CHART_W, CAP_CHART_H, CAP_PAD
    plot_w, plot_h = w - pad["left"] - pad["right"], h - pad["top"] - pad["bottom"]
    r_top = max((max(p[1] or 0, p[2] or 0) for p in points), default=0)
    r_max = _nice_max(r_top)
    if r_max % 4:  # replicas are whole: keep the 4 grid steps on whole numbers
        r_max = max(4, math.ceil(r_top / 4) * 4)
    c_vals = [p[3] for p in points if p[3] is not None]
    c_max = _nice_max(max(c_vals, default=0))
    slot = plot_w / len(points)
    bar_w = min(44.0, slot / 3)
    base_y = pad["top"] + plot_h

    def ry(v: float) -> float:
        return round(base_y - plot_h * v / r_max, 1)

    def cy(v: float) -> float:
        return round(base_y - plot_h * v / c_max, 1)

    bars, line = [], []
    for i, (mult, need, head, cost) in enumerate(points):
        cx = pad["left"] + slot * (i + 0.5)
        bar = {"label": f"{mult:g}×", "x_label": round(cx, 1),
               "sub": " → ".join(f"{v:,.0f}" for v in (need, head) if v is not None)}
        if need is not None:
            bar["need"] = {"x": round(cx - bar_w - 2, 1), "y": ry(need), "h": round(base_y - ry(need), 1),
                           "w": round(bar_w, 1), "v": f"{need:,.0f}", "tx": round(cx - bar_w / 2 - 2, 1)}
        if head is not None:
            bar["head"] = {"x": round(cx + 2, 1), "y": ry(head), "h": round(base_y - ry(head), 1),
                           "w": round(bar_w, 1), "v": f"{head:,.0f}", "tx": round(cx + bar_w / 2 + 2, 1)}
        bars.append(bar)
        if cost is not None:
            label = fmt_value(cost, "money") + "/h"
            # A label on a card-coloured plate stays readable where it crosses a bar.
            line.append({"x": round(cx, 1), "y": cy(cost), "v": label, "lw": round(7.2 * len(label) + 10, 1)})
    def money_tick(v: float) -> str:
        return f"${v:,.0f}" if c_max >= 20 else f"${v:,.2f}"

    ticks = [{"y": ry(r_max * t / 4), "r": f"{r_max * t / 4:,.4g}", "c": money_tick(c_max * t / 4)} for t in range(5)]
    return {
        "width": w, "height": h, "left": pad["left"], "right": w - pad["right"], "top": pad["top"],
        "base": base_y, "bars": bars, "line": line, "ticks": ticks, "has_cost": bool(line),
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in line),
    }


# ------------------------------------------------------------------------------------------------ evidence charts
LAT_CHART_W, LAT_CHART_H = 720, 250
LAT_PAD = {"left": 56, "right": 8, "top": 34, "bottom": 58}
LAT_GAP = 64
LAT_SIGNALS = (("ttft", "TTFT", "time to first token"), ("itl", "ITL", "inter-token latency"),
               ("e2e", "E2E", "end-to-end latency"))
CHAOS_W, CHAOS_LABEL_W, CHAOS_BAR_W, CHAOS_ROW_H = 440, 108, 260, 42
CHAOS_MEASURE_LABEL = {"detection_seconds": "hang detection", "drain_seconds": "drain",
                       "rollback_seconds": "rollback", "recovery_seconds": "recovery"}


def fmt_seconds(v: float) -> str:
    """Latency and timing labels: 48 ms, 1.25 s, 4.5 min."""
    if v < 1:
        return f"{v * 1000:,.0f} ms" if v >= 0.01 else f"{v * 1000:,.1f} ms"
    if v >= 120:
        return f"{v / 60:,.1f} min"
    return f"{v:,.2f} s" if v < 10 else f"{v:,.1f} s"


def _budget_label(b: float) -> str:
    return f"{b / 60:g} min" if b >= 120 and b % 60 == 0 else f"{b:g} s"


def _short_path(path: str) -> str:
    """A load or journal file as the reader knows it: relative to the working directory when under it."""
    import os

    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _latency_panel(x0: float, width: float, sig: str, label: str, long: str, pct: dict[str, Any],
                   slo: float | None) -> dict[str, Any] | None:
    values = [(q, _num(pct.get(q))) for q in ("p50", "p95", "p99")]
    if all(v is None for _, v in values):
        return None
    top = _nice_max(max([v for _, v in values if v is not None] + ([slo] if slo else [])) * 1.12)
    pad = LAT_PAD
    plot_h = LAT_CHART_H - pad["top"] - pad["bottom"]
    base = pad["top"] + plot_h

    def y(v: float) -> float:
        return round(base - plot_h * v / top, 1)

    slot = width / 3
    bar_w = min(56.0, slot * 0.6)
    bars = []
    for i, (q, v) in enumerate(values):
        cx = x0 + slot * (i + 0.5)
        over = slo is not None and v is not None and v > slo
        bars.append({"q": q, "x": round(cx - bar_w / 2, 1), "cx": round(cx, 1), "w": round(bar_w, 1),
                     "y": y(v) if v is not None else base, "h": round(base - y(v), 1) if v is not None else 0,
                     "v": fmt_seconds(v) if v is not None else "not reported", "missing": v is None,
                     "cls": f"lat-{q} " + ("lat-over" if over else "lat-in")})
    p95 = _num(pct.get("p95"))
    met = None if slo is None or p95 is None else p95 <= slo
    verdict = ("no SLO declared" if slo is None else "p95 not reported" if p95 is None else
               f"p95 {fmt_seconds(p95)} {'≤' if met else '>'} SLO {fmt_seconds(slo)}")
    aria = f"{long}: " + ", ".join(f"{q} {b['v']}" for q, b in zip(("p50", "p95", "p99"), bars)) + f"; {verdict}"
    return {
        "sig": sig, "label": label, "x0": round(x0, 1), "x1": round(x0 + width, 1), "base": base,
        "bars": bars, "met": met, "verdict": verdict, "aria": aria,
        "slo": {"y": y(slo), "label": f"SLO p95 {fmt_seconds(slo)}",
                "lw": round(6.6 * len(f"SLO p95 {fmt_seconds(slo)}") + 8, 1)} if slo is not None else None,
        "ticks": [{"y": y(top * t / 4), "label": fmt_seconds(top * t / 4) if t else "0"} for t in range(5)],
    }


def _latency_view(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """One chart per load file: p50/p95/p99 bars per signal, each on its own scale, the SLO as a line."""
    slo = evidence.get("slo") or {}
    charts = []
    for rec in evidence.get("load") or []:
        pct = rec.get("percentiles_s") or {}
        # E2E only when its SLO is declared: TTFT and ITL are what the SLO grades, E2E is context.
        signals = [s for s in LAT_SIGNALS if s[0] != "e2e" or _num(slo.get("e2e_p95_seconds")) is not None]
        n = len(signals)
        width = (LAT_CHART_W - LAT_PAD["left"] - LAT_PAD["right"] - LAT_GAP * (n - 1)) / n
        panels = []
        for i, (sig, label, long) in enumerate(signals):
            x0 = LAT_PAD["left"] + i * (width + LAT_GAP)
            panel = _latency_panel(x0, width, sig, label, long, pct.get(sig) or {},
                                   _num(slo.get(f"{sig}_p95_seconds")))
            if panel is not None:
                panels.append(panel)
        if not panels:
            continue
        ok, failed = rec.get("ok"), rec.get("failed")
        outcome = (f"{ok:,} ok, {failed:,} failed" if isinstance(ok, int) and isinstance(failed, int) else "")
        charts.append({"path": _short_path(str(rec.get("path", ""))), "source": rec.get("source", ""),
                       "outcome": outcome, "panels": panels, "width": LAT_CHART_W, "height": LAT_CHART_H,
                       "missed": [p["label"] for p in panels if p["met"] is False]})
    return charts


def _chaos_view(evidence: dict[str, Any]) -> dict[str, Any] | None:
    """Horizontal bars per journal and timing, on one scale per journal, with the budget lines drawn in."""
    groups, y = [], 0
    for rec in evidence.get("chaos") or []:
        budgets = rec.get("budgets_seconds") or {}
        measured = {m: _num(rec.get(m)) for m in CHAOS_MEASURE_LABEL if _num(rec.get(m)) is not None}
        lines_of = {m: sorted({float(b) for b in budgets.get(m) or [] if _num(b) is not None and b > 0},
                              reverse=True) for m in measured}
        # One scale per drill, so its timings compare at a glance; budget lines are on it too.
        top = max([v for v in measured.values()] + [b for ls in lines_of.values() for b in ls] + [1e-9]) * 1.08
        rows = []
        for m, v in measured.items():
            label, lines = CHAOS_MEASURE_LABEL[m], lines_of[m]
            hard = lines[0] if lines else None  # the loosest budget is the one that fails
            cls = ("ch-none" if hard is None else "ch-over" if v > hard else
                   "ch-near" if any(v > b for b in lines) else "ch-ok")
            within = ("no budget" if hard is None else
                      "; ".join(f"{'within' if v <= b else 'over'} {_budget_label(b)}" for b in lines))
            rows.append({"label": label, "v": fmt_seconds(v), "w": round(CHAOS_BAR_W * v / top, 1), "cls": cls,
                         "budgets": [{"x": round(CHAOS_LABEL_W + CHAOS_BAR_W * b / top, 1), "label": _budget_label(b)}
                                     for b in lines],
                         "aria": f"{label} {fmt_seconds(v)}, {within}"})
        if not rows:
            rows.append({"label": "no timings", "v": "", "w": 0, "cls": "ch-none", "budgets": [],
                         "aria": "the journal records no timings"})
        groups.append({"kind": rec.get("kind", "experiment"), "status": rec.get("status", "unknown"),
                       "deviated": rec.get("deviated"), "path": _short_path(str(rec.get("path", ""))),
                       "y": y, "rows": [{**r, "y": y + 26 + i * CHAOS_ROW_H} for i, r in enumerate(rows)]})
        y += 26 + len(rows) * CHAOS_ROW_H + 14
    if not groups:
        return None
    return {"groups": groups, "width": CHAOS_W, "height": y + 4, "x0": CHAOS_LABEL_W, "bar_w": CHAOS_BAR_W}


def _baseline_view(b: dict[str, Any] | None) -> dict[str, Any] | None:
    """The comparison with the previous report: headline, dimension deltas as a diverging chart, check moves."""
    if b is None:
        return None
    if not b.get("matched"):
        return {"matched": False, "source": b.get("source", "")}
    dims = b.get("dimensions") or []
    biggest = max([abs(d["delta"]) for d in dims if d.get("delta") is not None] + [10])
    span = _nice_max(biggest)
    mid, half, row_h = 420, 150, 28
    rows = []
    for i, d in enumerate(dims):
        delta = d.get("delta")
        w = round(half * abs(delta) / span, 1) if delta else 0
        rows.append({
            "name": d["name"], "y": 6 + i * row_h, "before": "—" if d.get("before") is None else d["before"],
            "after": d["after"], "delta": signed(delta), "x": mid - w if delta and delta < 0 else mid, "w": w,
            "cls": "up" if delta and delta > 0 else "down" if delta and delta < 0 else "flat",
            "status_change": (f"{d['status_before']} → {d['status_after']}"
                              if d.get("status_before") and d.get("status_before") != d.get("status_after") else ""),
        })
    sections = [{"key": key, "heading": heading, "entries": [
        {**c, "before_label": status_word(c["before"]), "after_label": status_word(c["after"])}
        for c in b["findings"][key]]} for key, heading in BASELINE_SECTIONS]
    delta = b["score"]["delta"]
    return {
        "matched": True, "origin": baseline_origin(b), "headline": baseline_headline(b),
        "score": b["score"], "verdict": b["verdict"], "delta": signed(delta),
        "trend": "up" if delta > 0 else "down" if delta < 0 else "flat",
        "verdict_before": VERDICT_LABEL.get(b["verdict"]["before"], b["verdict"]["before"]),
        "verdict_after": VERDICT_LABEL.get(b["verdict"]["after"], b["verdict"]["after"]),
        "chart": {"rows": rows, "width": 720, "height": 6 + len(rows) * row_h + 20, "mid": mid, "half": half,
                  "span": f"{span:g}", "axis_y": 6 + len(rows) * row_h + 4},
        "sections": sections, "any_moves": any(s["entries"] for s in sections),
        "as_of": b.get("as_of", ""), "quiet": quiet_checks_note(b),
    }


def _report_view(a: Assessment, index: int) -> dict[str, Any]:
    counts = status_counts(a)
    score = max(0, min(100, int(a.score)))
    radius = 52
    circ = 2 * math.pi * radius
    opened = open_findings(a)
    return {
        "a": a, "anchor": f"deployment-{index + 1}", "verdict_label": VERDICT_LABEL.get(a.verdict, a.verdict),
        "ready": a.verdict == "ready", "counts": counts, "score": score,
        "donut": {"r": radius, "circ": round(circ, 2), "dash": round(circ * score / 100, 2)},
        "dim_chart": _dimension_chart(a), "groups": _groups(a),
        "open_index": [{"f": f, "dimension": dimension_name(f.dimension)} for f in opened],
        "failing": [dimension_name(d) for d in failing_dimensions(a)],
        "capacity": _capacity_view(a.capacity),
        "gating_names": [DIMENSIONS[d] for d in GATING_DIMENSIONS],
        "latency": _latency_view(a.evidence or {}), "chaos": _chaos_view(a.evidence or {}),
        "has_evidence": bool(a.evidence), "baseline": _baseline_view(a.baseline),
        "n_measured": sum(f.basis == "evidence" for f in a.findings),
    }


def html(assessments: list[Assessment]) -> str:
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    source = resources.files("forge.readiness").joinpath("templates/report.html.j2").read_text(encoding="utf-8")
    template = env.from_string(source)
    reports = [_report_view(a, i) for i, a in enumerate(assessments)]
    title = (f"Forge readiness — {assessments[0].deployment}" if len(assessments) == 1
             else f"Forge readiness — {len(assessments)} deployments")
    return template.render(
        title=title, reports=reports, fleet=len(assessments) > 1, rules=_scoring_rules(),
        ready_count=sum(a.verdict == "ready" for a in assessments), total=len(assessments),
        forge_version=assessments[0].forge_version if assessments else "",
        as_of=assessments[0].as_of if assessments else "",
    )


def _scoring_rules() -> dict[str, int]:
    """The scorer's thresholds, read from the scorer so the "how the verdict is decided" box can't drift."""
    from forge.readiness import scoring

    return {"ready_min_total": scoring.READY_MIN_TOTAL, "fail_below": scoring.DIMENSION_FAIL_BELOW,
            "warn_below": scoring.DIMENSION_WARN_BELOW}
