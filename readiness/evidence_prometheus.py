"""Live evidence from a Prometheus that scrapes the deployment: `forge readiness assess --prometheus URL`.

    evidence = collect(url, deployment, window="1h")      # a plain dict; InputError when URL is no Prometheus

Read-only queries over the HTTP API (httpx, short timeouts). What it reads, each item on its own so that a
Prometheus answering only in part gives partial evidence with the reason per item (`{"error": "..."}`):

- targets: every active target up/down with its last scrape error and age; the ones serving this deployment;
- rules: Forge's groups and alert/recording names loaded vs what `forge alerts build --deploy FILE` generates
  for this deploy.yaml (alerts/generate.py is asked, nothing here lists names), rules in error;
- signals: which canonical signals this deployment needs have live series, which only in the engine's own
  names (no Forge exporter), which none;
- latency: TTFT / ITL p95 over the window (histogram_quantile of the catalog's histogram);
- availability: finished requests and server errors over the window (catalog signal `requests`);
- prefix cache hit ratio and speculative acceptance rate over the window (the catalog's derived PromQL);
- GPU: XID codes and uncorrectable ECC / row-remap counters (the catalog's DCGM names).

How a deployment's series are selected: the Forge exporter labels every canonical series with
`model=<deploy.yaml model.name>` (exporters/config.py), so canonical series are selected by
`model` in {model.name, engine.args.served_model_name}; an engine scraped directly is matched on its dialect's
model label (vLLM: `model_name`) with the same values. GPU (DCGM) series carry no model label: every GPU series
this Prometheus has counts, so point --prometheus at the deployment's own Prometheus (or a federation of it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from forge.catalog import Catalog, DerivedSignal, Signal, get_catalog
from forge.errors import InputError

DEFAULT_WINDOW = "1h"
TIMEOUT_S = 5.0            # per request; a dead host fails on connect well before it
CONNECT_TIMEOUT_S = 3.0
BUDGET_S = 30.0            # all queries of one assessment; past it the remaining items say so instead of waiting
# A target counts as stale when its last scrape is older than this many scrape intervals.
STALE_INTERVALS = 3
_WINDOW = re.compile(r"^\d+[smhdw]$")
_FIX = "give the base URL of a Prometheus that scrapes this deployment, e.g. http://127.0.0.1:9090"


# ----------------------------------------------------------------------------------------------- URL

def safe_url(url: str) -> str:
    """The URL without credentials or query string: what may appear in a message, a report or a log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = ("***@" if parts.username or parts.password else "") + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))
    except ValueError:
        # Unparsable (a bad port, say): still never show what could be a password or a token.
        return re.sub(r"//[^/@]*@", "//***@", url.split("?")[0].split("#")[0])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, where: str) -> str:
    """The API base (no trailing slash); InputError naming `where` for anything that is not an http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 — raises ValueError on a bad port
    except ValueError:
        raise InputError(f"{where}: {safe_url(url)} is not a valid URL (bad port?) — {_FIX}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{where}: {safe_url(url)} is not an http(s) URL — {_FIX}")
    if parts.query or parts.fragment:
        raise InputError(f"{where}: {safe_url(url)} has a query string or fragment — {_FIX}, without '?…'")
    return url.strip().rstrip("/")


# ----------------------------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class Selection:
    """Which series belong to the deployment: a label and the values it may take."""

    values: tuple[str, ...]

    def matcher(self, label: str = "model") -> str:
        if len(self.values) == 1:
            return f'{label}="{_escape(self.values[0])}"'
        return f'{label}=~"{"|".join(_escape(re.escape(v)) for v in self.values)}"'

    def describe(self) -> str:
        return self.matcher()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selection_for(deployment: Any) -> Selection:
    values = [deployment.model.name]
    served = getattr(deployment.engine.args, "served_model_name", None)
    if isinstance(served, str) and served and served not in values:
        values.append(served)
    return Selection(tuple(values))


def _with_matchers(metric: str, *matchers: str) -> str:
    inner = ",".join(m for m in matchers if m)
    return f"{metric}{{{inner}}}" if inner else metric


# ----------------------------------------------------------------------------------------------- HTTP

class PrometheusError(Exception):
    """One query failed; the message is the per-item reason."""


class Prometheus:
    """The few read-only calls Forge makes, each answer checked for Prometheus' `status: success` envelope."""

    def __init__(self, url: str, where: str, timeout_s: float = TIMEOUT_S):
        self.base = check_url(url, where)
        self.shown = safe_url(self.base)
        self.where = where
        host = urlsplit(self.base).hostname or ""
        # Loopback never goes through a proxy from the environment; a remote Prometheus may need one.
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
                                   trust_env=not _is_loopback(host), follow_redirects=True)
        self.deadline = time.monotonic() + BUDGET_S

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        if time.monotonic() > self.deadline:
            raise PrometheusError(f"{path}: not asked — Prometheus used up the {BUDGET_S:g} s Forge allows it")
        try:
            response = self.client.get(self.base + path, params=params)
        except httpx.TimeoutException:
            raise PrometheusError(f"{path}: timed out after {TIMEOUT_S:g} s") from None
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{path}: {_short_http_error(exc)}") from None
        try:
            body = response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise PrometheusError(f"{path}: HTTP {response.status_code} {kind}, not Prometheus API JSON") from None
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            raise PrometheusError(f"{path}: HTTP {response.status_code}, JSON without Prometheus' status field")
        if body["status"] != "success":
            raise PrometheusError(f"{path}: {body.get('errorType', 'error')}: {body.get('error', 'no reason given')}")
        return body.get("data")

    def query(self, promql: str, at: float | None = None) -> list[dict]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", params)
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise PrometheusError(f"query {promql!r}: expected an instant vector, got "
                                  f"{(data or {}).get('resultType') if isinstance(data, dict) else type(data).__name__}")
        return data.get("result") or []

    def probe(self) -> float:
        """Prometheus' own clock (`time()`); InputError when the URL is dead or answers like something else."""
        try:
            data = self.get("/api/v1/query", {"query": "time()"})
        except PrometheusError as exc:
            raise InputError(f"{self.where}: {self.shown} is not a reachable Prometheus ({exc}) — {_FIX}") from None
        try:
            assert isinstance(data, dict) and data.get("resultType") == "scalar"
            return float(data["result"][0])
        except (AssertionError, KeyError, IndexError, TypeError, ValueError):
            raise InputError(f"{self.where}: {self.shown} answered /api/v1/query without a scalar for time() — not "
                             f"Prometheus' HTTP API; {_FIX}") from None


def _short_http_error(exc: httpx.HTTPError) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        if "refused" in text.lower():
            return "connection refused"
        if "name" in text.lower() and ("resolution" in text.lower() or "known" in text.lower()):
            return "host name does not resolve"
    return " ".join(text.split())[:160]


# ----------------------------------------------------------------------------------------------- parsing

def _value(sample: dict) -> float | None:
    try:
        v = float(sample["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def _scalar(result: list[dict]) -> float | None:
    """The value of a one-sample result (`sum(...)`), None when the result is empty or not a number."""
    return _value(result[0]) if result else None


def _parse_time(text: str) -> float | None:
    """RFC 3339 with Go's nanoseconds (2026-11-23T13:39:24.30818079Z) -> unix seconds."""
    if not text or text.startswith("0001-"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return None
    base = dt.datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return base.timestamp() + (float("0." + m[2]) if m[2] else 0.0)


def _duration_s(text: str | None) -> float | None:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text or "")
    if not m:
        return None
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def parse_targets(data: Any, now: float, default_interval_s: float = 60.0) -> list[dict[str, Any]]:
    """/api/v1/targets -> one row per active target: job, instance, health, last_error, last_scrape_age_s, stale."""
    rows = []
    for t in (data or {}).get("activeTargets") or []:
        labels = t.get("labels") or {}
        last = _parse_time(t.get("lastScrape", ""))
        age = round(now - last, 1) if last is not None else None
        interval = _duration_s(t.get("scrapeInterval")) or default_interval_s
        rows.append({
            "job": labels.get("job") or t.get("scrapePool") or "?", "instance": labels.get("instance", "?"),
            "health": t.get("health", "unknown"), "last_error": t.get("lastError") or "",
            "last_scrape_age_s": age, "stale": age is None or age > STALE_INTERVALS * interval + 5,
        })
    return rows


def parse_rules(data: Any) -> list[dict[str, Any]]:
    """/api/v1/rules -> [{group, file, name, type, health, last_error, query}]."""
    rows = []
    for g in (data or {}).get("groups") or []:
        for r in g.get("rules") or []:
            rows.append({"group": g.get("name", "?"), "file": g.get("file", ""), "name": r.get("name", "?"),
                         "type": r.get("type", "?"), "health": r.get("health", "unknown"),
                         "last_error": r.get("lastError") or "", "query": r.get("query", "")})
    return rows


_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")


def _squash(promql: str) -> str:
    """PromQL as Prometheus prints it back (`1e6` as `1e+06`, its own spacing) compares equal to the source."""
    return _NUMBER.sub(lambda m: repr(float(m[0])), re.sub(r"\s+", "", promql))


def compare_rules(loaded: list[dict[str, Any]], expected: Any) -> dict[str, Any]:
    """Loaded rules vs the RuleSet Forge generates for this deploy.yaml (alerts/generate.py)."""
    by_name: dict[str, list[dict]] = {}
    for r in loaded:
        by_name.setdefault(r["name"], []).append(r)
    want_alerts = [a.alert for a in expected.alerts()]
    want_records = {r.record: r.expr for r in expected.records()}
    want_groups = [g.name for g in expected.groups]
    loaded_groups = sorted({r["group"] for r in loaded})
    # Loaded under the same name but none with the expression Forge generates for this deploy.yaml: generated for
    # other SLOs (another deployment's file) or by an older Forge.
    differs = sorted(
        name for name, expr in {**want_records, **{a.alert: a.expr for a in expected.alerts()}}.items()
        if name in by_name and not any(_squash(r["query"]) == _squash(expr) for r in by_name[name] if r["query"]))
    return {
        "expected_groups": want_groups,
        "groups_found": [g for g in want_groups if g in loaded_groups],
        "groups_missing": [g for g in want_groups if g not in loaded_groups],
        "alerts_expected": len(want_alerts),
        "alerts_found": [a for a in want_alerts if a in by_name],
        "alerts_missing": [a for a in want_alerts if a not in by_name],
        "records_expected": len(want_records),
        "records_missing": sorted(r for r in want_records if r not in by_name),
        "differs_from_generated": differs,
        "unhealthy": [{"name": r["name"], "group": r["group"], "health": r["health"], "error": r["last_error"]}
                      for r in loaded if r["health"] == "err"],
        "loaded_alert_names": sorted({r["name"] for r in loaded if r["type"] == "alerting"}),
        "loaded_rules": len(loaded),
    }


# ----------------------------------------------------------------------------------------------- needs

@dataclass(frozen=True)
class Need:
    alias: str          # the catalog alias (deploy.yaml's name for it)
    why: str            # which dimension needs it, in words
    declared: bool      # listed under observability.signals: a claim the live series can contradict


def needed_signals(deployment: Any, catalog: Catalog) -> list[Need]:
    """The catalog signals the readiness dimensions need for this deployment, and why."""
    obs = deployment.observability
    declared = set(obs.signals) if obs else set()
    args = deployment.engine.args
    slo = deployment.slo
    wants: list[tuple[str, str]] = [
        ("ttft", "TTFT SLO and OBS-002"), ("itl", "ITL SLO and OBS-002"),
        ("kv_cache_usage", "saturation (OBS-003)"), ("requests_waiting", "saturation (OBS-003)"),
        ("preemptions", "saturation (OBS-003)"), ("requests", "availability SLO and error-ratio alerts"),
        ("generation_tokens", "hung-engine alert (ForgeEngineHung)"),
        ("requests_running", "hung-engine alert (ForgeEngineHung)"),
        ("engine_up", "engine-down alert (ForgeEngineDown)"),
    ]
    if slo is None or slo.availability is None:
        wants = [w for w in wants if w[0] != "requests"] + [("requests", "error-ratio alerts")]
    if args.enable_prefix_caching:
        wants.append(("prefix_cache_hit_ratio", "prefix caching is on (OBS-004)"))
    if args.speculative_config is not None:
        wants.append(("spec_acceptance_rate", "speculative decoding (OBS-005)"))
    if deployment.hardware.gpu != "CPU":
        wants += [("gpu_utilization", "GPU health (OBS-006)"), ("gpu_xid_errors", "GPU health (OBS-006)")]
    wants += [(alias, "declared in observability.signals") for alias in sorted(declared)]
    out: dict[str, Need] = {}
    for alias, why in wants:
        if alias not in catalog.aliases:
            continue  # an unknown declared name is OBS-011's finding, not a live one
        if alias in out:
            continue
        out[alias] = Need(alias, why, alias in declared)
    return list(out.values())


def _engine_dialects(deployment: Any, catalog: Catalog) -> list:
    return [d for d in catalog.dialects.values() if d.engine == deployment.engine.name]


def _native_names(signal: Signal, dialects: list) -> list[tuple[str, str | None, dict]]:
    """(engine metric, its model label, exact label matches) for each plain source of `signal`."""
    out = []
    for dialect in dialects:
        for m in signal.sources.get(dialect.id, ()):
            if m.selector is not None:
                out.append((m.selector.metric, dialect.model_label, dict(m.selector.match)))
    return out


# ----------------------------------------------------------------------------------------------- collection

@dataclass
class _Run:
    prom: Prometheus
    deployment: Any
    window: str
    now: float
    catalog: Catalog = field(default_factory=get_catalog)

    @property
    def sel(self) -> Selection:
        return selection_for(self.deployment)

    def item(self, fn) -> dict[str, Any]:
        try:
            return fn()
        except PrometheusError as exc:
            return {"error": str(exc)}

    # -- targets
    def targets(self) -> dict[str, Any]:
        rows = parse_targets(self.prom.get("/api/v1/targets"), self.now)
        labels = {"model"} | {d.model_label for d in _engine_dialects(self.deployment, self.catalog) if d.model_label}
        serving: set[tuple[str, str]] = set()
        for label in sorted(labels):
            # Over the window: a target that went down has no current series, yet it is the one that serves us.
            for s in self.prom.query(
                    f"count by (job, instance) (last_over_time({{{self.sel.matcher(label)}}}[{self.window}]))"):
                serving.add((s["metric"].get("job", "?"), s["metric"].get("instance", "?")))
        for r in rows:
            r["serves_deployment"] = (r["job"], r["instance"]) in serving
        engine_up = self.catalog.aliases["engine_up"]
        replicas_down = sorted(
            s["metric"].get("replica", s["metric"].get("instance", "?"))
            for s in self.prom.query(_with_matchers(engine_up, self.sel.matcher()) + " == 0"))
        return {"targets": rows, "replicas_down": replicas_down, "serving": len(serving),
                "selector": self.sel.describe()}

    # -- rules
    def rules(self) -> dict[str, Any]:
        from forge.alerts.generate import build_rules, settings_from_deployment

        try:
            expected = build_rules(settings_from_deployment(self.deployment))
        except InputError as exc:
            return {"error": f"Forge can't generate rules for this deploy.yaml: {exc.messages[0]}"}
        return compare_rules(parse_rules(self.prom.get("/api/v1/rules")), expected)

    # -- signals
    def _present(self, promql: str) -> int:
        return len(self.prom.query(promql))

    def signal_presence(self, need: Need) -> dict[str, Any]:
        target = self.catalog.get(need.alias)
        row: dict[str, Any] = {"signal": target.name, "why": need.why, "declared": need.declared}
        if isinstance(target, DerivedSignal):
            # Present when the catalog's own PromQL gives a series for this deployment.
            series = [s for s in self.prom.query(target.expr(self.window, "model"))
                      if s["metric"].get("model") in self.sel.values]
            row.update(state="present" if series else "missing", series=len(series))
            if not series:
                row["inputs"] = sorted(target.inputs())
            return row
        if target.scope == "gpu":
            n = self._present(f"last_over_time({target.name}[{self.window}])")
            row.update(state="present" if n else "missing", series=n)
            return row
        name = target.name + ("_count" if target.type == "histogram" else "")
        n = self._present(f"last_over_time({_with_matchers(name, self.sel.matcher())}[{self.window}])")
        if n:
            row.update(state="present", series=n)
            return row
        for metric, label, match in _native_names(target, _engine_dialects(self.deployment, self.catalog)):
            matchers = [f'{k}="{_escape(v)}"' for k, v in match.items()]
            if label:
                matchers.append(self.sel.matcher(label))
            native = metric + ("_count" if target.type == "histogram" else "")
            n = self._present(f"last_over_time({_with_matchers(native, *matchers)}[{self.window}])")
            if n:
                row.update(state="native_only", series=n, native=metric)
                return row
        dialects = _engine_dialects(self.deployment, self.catalog)
        if dialects and all(d.id in target.unavailable for d in dialects):
            # The engine has no such metric at all (the catalog says why): nothing a deployment could fix.
            row.update(state="engine_lacks", series=0, reason=target.unavailable[dialects[0].id])
            return row
        row.update(state="missing", series=0)
        return row

    def signals(self) -> dict[str, Any]:
        rows = []
        for need in needed_signals(self.deployment, self.catalog):
            try:
                rows.append(self.signal_presence(need))
            except PrometheusError as exc:
                rows.append({"signal": self.catalog.aliases[need.alias], "why": need.why, "declared": need.declared,
                             "state": "unknown", "error": str(exc)})
        others: list[str] = []
        if any(r["state"] == "missing" for r in rows):
            # Which models this Prometheus does have: a model.name that doesn't match the exporter's label shows here.
            up = self.catalog.aliases["engine_up"]
            others = sorted({s["metric"]["model"] for s in self.prom.query(
                f"count by (model) (last_over_time({up}[{self.window}]))") if s["metric"].get("model")}
                - set(self.sel.values))
        return {
            "selector": self.sel.describe(),
            "other_models": others,
            "needed": rows,
            "present": [r["signal"] for r in rows if r["state"] == "present"],
            "native_only": [r["signal"] for r in rows if r["state"] == "native_only"],
            "missing": [r["signal"] for r in rows if r["state"] == "missing"],
            "unknown": [r["signal"] for r in rows if r["state"] == "unknown"],
            "engine_lacks": [r["signal"] for r in rows if r["state"] == "engine_lacks"],
        }

    # -- latency
    def latency(self, alias: str, quantile: float = 0.95) -> dict[str, Any]:
        signal = self.catalog.get(alias)
        assert isinstance(signal, Signal) and signal.type == "histogram"
        candidates = [(signal.name, self.sel.matcher(), {}, 1.0)]
        for dialect in _engine_dialects(self.deployment, self.catalog):
            for m in signal.sources.get(dialect.id, ()):
                if m.selector is not None and dialect.model_label:
                    candidates.append((m.selector.metric, self.sel.matcher(dialect.model_label),
                                       dict(m.selector.match), m.scale))
        for metric, matcher, match, scale in candidates:
            matchers = [matcher, *(f'{k}="{_escape(v)}"' for k, v in match.items())]
            count = _scalar(self.prom.query(
                f"sum(increase({_with_matchers(metric + '_count', *matchers)}[{self.window}]))"))
            if count is None:
                continue  # no such series: try the engine's own name
            p = _scalar(self.prom.query(
                f"histogram_quantile({quantile:g}, sum by (le) (rate({_with_matchers(metric + '_bucket', *matchers)}"
                f"[{self.window}])))"))
            return {"series": metric, "quantile": quantile, "observations": round(count),
                    f"p{round(quantile * 100)}_seconds": None if p is None else round(p * scale, 6)}
        return {"series": None, "quantile": quantile, "observations": 0, f"p{round(quantile * 100)}_seconds": None,
                "missing": f"no {signal.name} series (nor the engine's own) for {self.sel.describe()}"}

    # -- availability
    def availability(self) -> dict[str, Any]:
        requests = self.catalog.aliases["requests"]
        total = _scalar(self.prom.query(
            f"sum(increase({_with_matchers(requests, self.sel.matcher())}[{self.window}]))"))
        if total is None:
            return {"requests": 0, "errors": 0, "success_ratio": None,
                    "missing": f"no {requests} series for {self.sel.describe()}"}
        failed = _with_matchers(requests, self.sel.matcher(), 'outcome="error"')
        errors = _scalar(self.prom.query(f"sum(increase({failed}[{self.window}]))")) or 0.0
        return {"requests": round(total), "errors": round(errors), "signal": requests,
                "success_ratio": round(1 - errors / total, 6) if total > 0 else None}

    # -- derived ratios
    def derived_ratio(self, alias: str) -> dict[str, Any]:
        derived = self.catalog.get(alias)
        assert isinstance(derived, DerivedSignal)
        values = [_value(s) for s in self.prom.query(derived.expr(self.window, "model"))
                  if s["metric"].get("model") in self.sel.values]
        if not values:
            return {"signal": derived.name, "value": None, "series": 0}
        known = [v for v in values if v is not None]
        # NaN: the window saw no prompt tokens / drafts, so there is nothing to divide.
        return {"signal": derived.name, "value": round(min(known), 6) if known else None, "series": len(values)}

    # -- GPU health
    def gpu(self) -> dict[str, Any]:
        xid = self.catalog.aliases["gpu_xid_errors"]
        ecc = self.catalog.aliases["gpu_ecc_errors"]
        remap = self.catalog.aliases["gpu_remapped_rows"]
        gpus = self.prom.query(f"count by (job) (last_over_time({xid}[{self.window}]))")
        xids = [{"gpu": s["metric"].get("gpu") or s["metric"].get("instance", "?"),
                 "host": s["metric"].get("Hostname") or s["metric"].get("instance", ""),
                 "xid": int(v)} for s in self.prom.query(f"max_over_time({xid}[{self.window}]) > 0")
                if (v := _value(s)) is not None]
        ecc_series = self.prom.query(f"last_over_time({ecc}[{self.window}])")
        ecc_up = [{"gpu": s["metric"].get("gpu", "?"), "host": s["metric"].get("Hostname", ""), "errors": _value(s)}
                  for s in self.prom.query(f"{ecc} > 0")]
        remapped = [{"gpu": s["metric"].get("gpu", "?"), "host": s["metric"].get("Hostname", ""), "rows": _value(s)}
                    for s in self.prom.query(f"increase({remap}[{self.window}]) > 0")]
        return {"gpu_series": sum(round(_value(s) or 0) for s in gpus), "xid": xids,
                "ecc_series": len(ecc_series), "ecc_uncorrectable": ecc_up, "rows_remapped": remapped,
                "signals": [xid, ecc, remap]}


def collect(url: str, deployment: Any, window: str = DEFAULT_WINDOW, where: str = "--prometheus") -> dict[str, Any]:
    """Live evidence for one deployment from the Prometheus at `url`. InputError (one line, naming `where`) when
    the URL is not a reachable Prometheus; otherwise a dict whose items carry `error` where a query failed."""
    if not _WINDOW.match(window):
        raise InputError(f"{where}: window {window!r} is not a Prometheus duration — use e.g. 1h, 30m, 7d")
    prom = Prometheus(url, where)
    try:
        now = prom.probe()
        run = _Run(prom, deployment, window, now)
        version = run.item(lambda: {"version": (prom.get("/api/v1/status/buildinfo") or {}).get("version")})
        evidence: dict[str, Any] = {
            "url": prom.shown, "window": window, "selector": run.sel.describe(), "evaluated_at": now,
            "prometheus_version": version.get("version"),
            "targets": run.item(run.targets),
            "rules": run.item(run.rules),
            "signals": run.item(run.signals),
            "latency": {alias: run.item(lambda a=alias: run.latency(a)) for alias in ("ttft", "itl")},
            "availability": run.item(run.availability),
            "prefix_cache": run.item(lambda: run.derived_ratio("prefix_cache_hit_ratio")),
            "spec_decode": run.item(lambda: run.derived_ratio("spec_acceptance_rate")),
            "gpu": run.item(run.gpu),
        }
    finally:
        prom.close()
    return evidence


def origin(loaded: Any, url: str) -> str:
    """Where the URL came from, for error lines: the deploy file's key (file:line:col) or the CLI flag."""
    raw = (loaded.raw or {}).get("evidence") if isinstance(loaded.raw, dict) else None
    if isinstance(raw, dict) and raw.get("prometheus_url") == url:
        line, column = loaded.lines.locate("evidence.prometheus_url")
        return f"{loaded.path}:{line}:{column}: evidence.prometheus_url"
    return "--prometheus"


def check_reachable(url: str, where: str) -> None:
    """InputError (one line naming `where`) unless `url` answers like Prometheus' HTTP API."""
    prom = Prometheus(url, where)
    try:
        prom.probe()
    finally:
        prom.close()
