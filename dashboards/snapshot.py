"""What the dashboards show, as a picture for the docs: a few panels' queries run over a live Prometheus and drawn.

    python -m forge.dashboards.snapshot --prometheus http://127.0.0.1:9090 --minutes 3 --out docs/img/panels.html
    (then `--png docs/img/dashboard-panels.png` photographs the page with headless Chromium)

Each panel's PromQL is taken from the committed reference-stack dashboard JSON (Grafana variables set to "All"),
run with /api/v1/query_range and drawn as inline SVG lines, one colour per series: the same numbers Grafana would
plot from that Prometheus, without needing a Grafana to take the picture.
"""

from __future__ import annotations

import argparse
import html
import re
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from forge.dashboards.validate import panels

DASHBOARDS = Path(__file__).resolve().parent / "generated" / "reference-stack"
# (dashboard, panel title): golden signals and saturation, the first things an on-call engineer looks at.
DEFAULT_PANELS = [("fleet-overview", "Time to first token"), ("fleet-overview", "Token throughput"),
                  ("engine-deep-dive", "Running and waiting"), ("engine-deep-dive", "KV cache usage")]
GRAFANA_ALL = {"${datasource}": "", "$datasource": "", "$__rate_interval": "1m", "$__interval": "15s",
               "$__range": "5m", "$model": ".*", "$replica": ".*", "$team": ".*", "$hostname": ".*", "$gpu": ".*"}
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
WIDTH, HEIGHT, PAD = 560, 200, 56


def panel_queries(dashboard: str, title: str) -> tuple[list[tuple[str, str]], str]:
    """The panel's (PromQL, legend format) pairs with Grafana's variables on "All", and its unit."""
    board = json.loads((DASHBOARDS / f"{dashboard}.json").read_text(encoding="utf-8"))
    for panel in panels(board):
        if panel["title"] == title:
            queries = []
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in sorted(GRAFANA_ALL.items(), key=lambda kv: -len(kv[0])):
                    expr = expr.replace(variable, value)
                queries.append((expr, target.get("legendFormat", "")))
            return queries, panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    raise SystemExit(f"{dashboard}: no panel titled {title!r}")


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    url = f"{prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(url, timeout=15) as response:
        return json.load(response)["data"]["result"]


def _label(metric: dict, legend: str) -> str:
    """Grafana's legend: `{{replica}} p95` filled from the series' labels."""
    if legend:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(metric.get(m.group(1), "")), legend).strip() or "total"
    return ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__") or "total"


def chart(title: str, unit: str, series: list[tuple[str, list[tuple[float, float]]]], start: float, end: float) -> str:
    values = [v for _, points in series for _, v in points]
    top = max(values) * 1.1 if values and max(values) > 0 else 1.0
    x = lambda t: PAD + (t - start) / (end - start) * (WIDTH - PAD - 8)  # noqa: E731
    y = lambda v: HEIGHT - PAD + 10 - v / top * (HEIGHT - PAD - 20)  # noqa: E731
    parts = [f'<figure><figcaption>{html.escape(title)} <span>({html.escape(unit or "value")})</span></figcaption>',
             f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">']
    for frac in (0, 0.5, 1):
        yy = y(top * frac / 1.1)
        parts.append(f'<line x1="{PAD}" x2="{WIDTH - 8}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                     f'<text x="{PAD - 6}" y="{yy + 4:.1f}" text-anchor="end">{top * frac / 1.1:.3g}</text>')
    parts.append(f'<text x="{PAD}" y="{HEIGHT - 8}">-{(end - start) / 60:.0f} min</text>'
                 f'<text x="{WIDTH - 8}" y="{HEIGHT - 8}" text-anchor="end">now</text>')
    legend = []
    for i, (label, points) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        legend.append(f'<li style="color:{colour}">{html.escape(label)}</li>')
    parts.append(f"</svg><ul>{''.join(legend)}</ul></figure>")
    return "".join(parts)


def snapshot(prometheus: str, minutes: float, chosen=DEFAULT_PANELS) -> str:
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 120)
    figures = []
    for dashboard, title in chosen:
        queries, unit = panel_queries(dashboard, title)
        series = []
        for expr, legend in queries:
            for result in query_range(prometheus, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
                if points:
                    series.append((_label(result["metric"], legend), points))
        figures.append(chart(f"{dashboard} · {title}", unit, series[:6], start, end))
    style = ("body{font:13px system-ui,sans-serif;margin:16px;color:#111}main{display:grid;"
             "grid-template-columns:repeat(2,1fr);gap:12px}figure{margin:0;border:1px solid #e5e7eb;padding:8px;"
             "border-radius:6px}figcaption{font-weight:600;margin-bottom:4px}figcaption span{color:#6b7280;"
             "font-weight:400}svg{width:100%;height:auto}svg text{font-size:10px;fill:#374151}.grid{stroke:#e5e7eb}"
             "ul{list-style:none;margin:2px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:2px 14px;font-size:11px}")
    return (f"<!doctype html><meta charset=utf-8><title>Forge dashboards, live</title><style>{style}</style>"
            f"<h3>Forge reference-stack dashboards: panel queries over the last {minutes:g} min of a live stack</h3>"
            f"<main>{''.join(figures)}</main>")


def photograph(page: Path, png: Path, width: int = 1200, height: int = 640) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("--png needs Chromium (`make browser` installs it)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, required=True, help="HTML page to write")
    parser.add_argument("--png", type=Path, help="also photograph the page (headless Chromium)")
    args = parser.parse_args(argv)
    args.out.write_text(snapshot(args.prometheus.rstrip("/"), args.minutes), encoding="utf-8")
    if args.png:
        photograph(args.out, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
