"""Every committed reference-stack dashboard, proven on the live stack (issue 7, "Proven live").

Starts the reference stack (two simulator replicas behind HAProxy, Prometheus with the generated rules, the Forge
exporter), sends bounded load with prefix-sharing prompts through the gateway, waits for Prometheus to scrape it,
then runs every panel's every query — Grafana variables replaced by their "All" values — against the stack's
Prometheus. Each must parse, and each must return at least one series unless its panel is listed in EXEMPT with the
reason it cannot have data on this stack. Needs haproxy, prometheus and prometheus-alertmanager (`make stack-deps`).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import need_stack_binaries, wait_for
from forge.dashboards.validate import panels
from forge.reference_stack import stack
from typer.testing import CliRunner

pytestmark = [pytest.mark.stack, pytest.mark.timeout(240)]

need_stack_binaries()

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards" / "generated" / "reference-stack"

# What Grafana would send with every variable on "All" (allValue ".*"), and windows that fit a stack that has
# existed for under a minute: rate() needs two samples in its window, and the 5 s scrape interval gives them.
GRAFANA_VALUES = {"${datasource}": "", "$datasource": "", "$__rate_interval": "1m", "$__interval": "15s",
                  "$__range": "5m", "$model": ".*", "$replica": ".*", "$team": ".*", "$hostname": ".*", "$gpu": ".*"}

# Simulator flags: speculative decoding on, so the speculative-acceptance panel has data.
SIM_ARGS = ["--spec-tokens", "2", "--spec-acceptance-rate", "0.7"]

# The stack has no GPU and runs no dcgm-exporter. Its Prometheus scrapes the simulator's dcgm-exporter-style
# /gpu-metrics page (utilization, XID and double-bit ECC), so only the DCGM fields that page doesn't serve stay empty.
_NO_DCGM = "no dcgm-exporter on the stack (no GPU), and the simulator's /gpu-metrics does not serve this DCGM field"
# (dashboard file stem, panel title) -> why it has no data on this stack. Keep it as short as the truth allows.
EXEMPT: dict[tuple[str, ...], str] = {
    **{("gpu-health", title): _NO_DCGM for title in (
        "GPU memory used", "Power draw", "Temperature", "Throttling", "SM clock")},
    # The simulator serves double-bit ECC (query A of this panel), not these three fields.
    **{("gpu-health", "ECC errors and row remapping", ref): _NO_DCGM for ref in ("B", "C", "D")},
}


def exemption(stem: str, title: str, ref: str) -> str | None:
    """Why a query may be empty on this stack: its whole panel is exempt, or this query (refId) of it."""
    return EXEMPT.get((stem, title)) or EXEMPT.get((stem, title, ref))

LOAD_DURATION_S = 20
SCRAPES_AFTER_LOAD = 3
runner = CliRunner()


def as_live_promql(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VALUES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know is left in: {expr}"
    return expr


def panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard stem, panel title, refId, PromQL) of every query of every committed reference-stack dashboard."""
    rows = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in panels(board):
            for target in panel.get("targets", []):
                rows.append((path.stem, panel["title"], target.get("refId", "?"), as_live_promql(target["expr"])))
    return rows


def prometheus_query(base_url: str, promql: str) -> dict:
    """The /api/v1/query answer; an HTTP 400/422 (bad PromQL, execution error) is returned as its JSON body."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read() or b'{"status": "error", "error": "empty body"}')


def test_exemptions_name_real_panels():
    known = {key for stem, title, ref, _ in panel_queries() for key in ((stem, title), (stem, title, ref))}
    assert set(EXEMPT) <= known, sorted(set(EXEMPT) - known)
    assert len(panel_queries()) > 0


def test_every_panel_query_returns_series_on_the_live_stack(tmp_path):
    started = time.monotonic()
    queries = panel_queries()
    plan = stack.StackPlan(state_dir=tmp_path / "state", engine="sim", replicas=2, ports=stack.Ports.free(2),
                           sim_args=SIM_ARGS)
    try:
        running = stack.up(plan)
        prom = running.prometheus_url
        assert running.gateway_url.startswith("http://127.0.0.1:"), running.gateway_url

        from forge.load.cli import app as load_app
        out = tmp_path / "load.jsonl"
        # Bounded: 4 requests/s for 20 s, at most 80; prompts share one of 4 prefixes so the prefix cache hits.
        result = runner.invoke(load_app, [
            "run", "--target", running.gateway_url, "--rate", "4", "--duration", str(LOAD_DURATION_S),
            "--max-requests", "80", "--prompt-tokens", "fixed:96", "--output-tokens", "fixed:24",
            "--shared-prefix-tokens", "64", "--prefix-groups", "4", "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows and all(r["outcome"] == "ok" for r in rows), [r["outcome"] for r in rows]

        # Prometheus has scraped the engines and the exporter a few times since the load ended.
        load_done = time.time()

        def scraped_after_load():
            targets = json.loads(urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=10).read())
            active = targets["data"]["activeTargets"]
            return all(t["health"] == "up" and _unix(t["lastScrape"]) > load_done + (SCRAPES_AFTER_LOAD - 1) *
                       plan.scrape_interval_s for t in active) if active else False

        assert wait_for(scraped_after_load, 30, 0.5), "Prometheus did not scrape every target after the load"
        _wait_past_first_minute_step(prom)

        results = []
        for stem, title, ref, promql in queries:
            answer = prometheus_query(prom, promql)
            series = len(answer["data"]["result"]) if answer.get("status") == "success" else None
            results.append((stem, title, ref, promql, answer, series))

        width = max(len(f"{s} / {t} [{r}]") for s, t, r, *_ in results)
        print(f"\n{'panel':<{width}}  series")
        for stem, title, ref, _, answer, series in results:
            why = exemption(stem, title, ref)
            note = f"  (exempt: {why})" if why else ""
            shown = series if series is not None else f"ERROR {answer.get('error')}"
            print(f"{f'{stem} / {title} [{ref}]':<{width}}  {shown}{note}")

        errors = [f"{s} / {t} [{r}]: {a.get('errorType')}: {a.get('error')} — {q}"
                  for s, t, r, q, a, n in results if n is None]
        assert not errors, "queries Prometheus rejected:\n" + "\n".join(errors)
        warnings = [f"{s} / {t} [{r}]: {a['warnings']}" for s, t, r, q, a, n in results if a.get("warnings")]
        assert not warnings, "\n".join(warnings)
        empty = [f"{s} / {t} [{r}]: {q}" for s, t, r, q, a, n in results if n == 0 and not exemption(s, t, r)]
        assert not empty, "panels without data on the live stack:\n" + "\n".join(empty)
        # An exemption that now has data is stale: drop it from EXEMPT.
        stale = sorted({(s, t, r) for s, t, r, q, a, n in results if n and exemption(s, t, r)})
        assert not stale, f"exempt panels that have data now: {stale}"
        # The load moved the series these panels show, not just left them at zero.
        values = {(s, t, r): [float(x["value"][1]) for x in a["data"]["result"]] for s, t, r, q, a, n in results}
        for key in (("engine-deep-dive", "Prefix-cache hit ratio", "A"), ("engine-deep-dive", "Speculative acceptance",
                    "A"), ("fleet-overview", "Requests / s", "A"), ("fleet-overview", "Output tokens / s", "A")):
            assert any(v > 0 for v in values[key]), (key, values[key])
        with_data = {(s, t) for s, t, r, q, a, n in results if n}
        print(f"{len(with_data)} panels with data, {len(EXEMPT)} exemptions; "
              f"{time.monotonic() - started:.1f} s from stack start to the last query")
    finally:
        stack.down(plan.state_dir)  # always: also after a failed test or a failed start


def _wait_past_first_minute_step(prom: str) -> None:
    """`Idle GPU-hours` sums a `[$__range:1m]` subquery, whose steps fall on whole minutes of wall time: it has a
    point only once a whole minute has passed since the exporter's first sample. Wait for it (at most ~60 s after
    the stack started; usually a few seconds or none)."""
    first = prometheus_query(prom, "forge_replica_gpus[5m]")["data"]["result"]
    assert first, "the exporter's forge_replica_gpus never reached Prometheus"
    first_sample = min(float(s["values"][0][0]) for s in first)
    step = (int(first_sample) // 60 + 1) * 60
    if time.time() < step + 1:
        time.sleep(step + 1 - time.time())


def _unix(rfc3339: str) -> float:
    """Prometheus' lastScrape ("2026-01-02T03:04:05.123456789Z") as Unix seconds."""
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{frac or 0}")
