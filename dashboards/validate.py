"""Checks a generated dashboard JSON model: what Grafana needs to import it, and that queries read only
canonical names.

    problems = validate_dashboard(board, allowed_metric_names())   # [] when fine, else one line each

Metric names are parsed out of the PromQL with a regex (no PromQL parser in Python): label matchers, string
literals, range/subquery brackets and grouping-label lists are removed first; what is left and is neither a
function, a keyword nor a number is a series name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

MIN_SCHEMA_VERSION = 36     # Grafana 9.0; older Grafanas don't know every panel option used here
DATASOURCE_UID = "${datasource}"
ALERTS_DIR = Path(__file__).resolve().parent.parent / "alerts"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan",
             # aggregation operators may be followed by `by (...)` before their parenthesis
             "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
             "quantile", "limitk", "limit_ratio"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Series names an expression reads (`x_bucket`/`_sum`/`_count` kept as written)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _LABEL_LIST.sub(r"\1", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match[1], match[2]
        if call or word.lower() in _KEYWORDS:
            continue            # a function call (rate(...)) or an operator keyword
        names.add(word)
    return names


def recording_rule_names(paths: Iterable[Path] | None = None) -> set[str]:
    """`record:` names of the committed rule files of `forge alerts build`."""
    names: set[str] = set()
    for path in paths if paths is not None else sorted(ALERTS_DIR.glob("*-rules.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        names |= {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    return names


def cost_series_names() -> set[str]:
    """Families the exporter's cost collector writes, asked of the collector itself (not copied here)."""
    from forge.exporters.config import Cost, Target
    from forge.exporters.cost import CostCollector

    probe = Target(url="http://127.0.0.1:1/metrics", name="probe", model="probe",
                   cost=Cost(price_per_gpu_hour=1.0, gpus=1, accelerator="probe", capacity="on-demand",
                             price_source="probe"))
    return {family.name for family in CostCollector([probe]).families()}


def allowed_metric_names(rule_files: Iterable[Path] | None = None) -> set[str]:
    """Catalog signals (engine, GPU/DCGM, exporter), the cost collector's series, and Forge recording rules."""
    from forge.catalog import get_catalog

    catalog = get_catalog()
    names = set(catalog.signals)
    names |= {f"{name}{suffix}" for name, s in catalog.signals.items() if s.type == "histogram"
              for suffix in _HISTOGRAM_SUFFIXES}
    return names | cost_series_names() | recording_rule_names(rule_files)


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])      # panels collapsed inside a row


def validate_dashboard(board: dict[str, Any], allowed: set[str]) -> list[str]:
    title = board.get("title", "?")
    problems: list[str] = []
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < MIN_SCHEMA_VERSION:
        problems.append(f"{title}: schemaVersion {board.get('schemaVersion')!r} < {MIN_SCHEMA_VERSION}")
    if not board.get("uid"):
        problems.append(f"{title}: no uid (a re-import would duplicate the dashboard)")
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{title}: no `datasource` template variable of type datasource (prometheus)")
    ids = [p.get("id") for p in panels(board)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates or None in ids:
        problems.append(f"{title}: panel ids not unique or missing: {duplicates or 'None'}")
    if not ids:
        problems.append(f"{title}: no panels")
    for panel in panels(board):
        where = f"{title} / {panel.get('title')!r}"
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE_UID:
            problems.append(f"{where}: datasource is not {DATASOURCE_UID}")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        if not defaults.get("unit"):
            problems.append(f"{where}: no unit")
        steps = defaults.get("thresholds", {}).get("steps")
        if not steps or steps[0].get("value") is not None:
            problems.append(f"{where}: thresholds missing or without a base step")
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
        for query in panel.get("targets", []):
            expr = (query.get("expr") or "").strip()
            if not expr:
                problems.append(f"{where}: empty query expr (refId {query.get('refId')})")
                continue
            if (query.get("datasource") or {}).get("uid") != DATASOURCE_UID:
                problems.append(f"{where}: query {query.get('refId')} datasource is not {DATASOURCE_UID}")
            unknown = sorted(metric_names(expr) - allowed)
            if unknown:
                problems.append(f"{where}: reads {unknown}, not catalog signals, cost series or recording rules")
    for name, variable in variables.items():
        if variable.get("type") == "query":
            unknown = sorted(metric_names(_variable_expr(variable["query"])) - allowed)
            if unknown:
                problems.append(f"{title}: variable ${name} reads unknown {unknown}")
    return problems


def _variable_expr(query: str) -> str:
    """`label_values(metric{...}, label)` -> `metric{...}`."""
    found = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", query, re.S)
    return found[1] if found else query


# Grafana variables with values that make every expression plain PromQL for promtool.
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m",
                         "$model": ".*", "$replica": ".*", "$team": ".*", "$hostname": ".*", "$gpu": ".*"}


def as_promql(expr: str) -> str:
    for variable, value in sorted(GRAFANA_SUBSTITUTIONS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    return expr


__all__ = ["allowed_metric_names", "as_promql", "metric_names", "panels", "recording_rule_names",
           "validate_dashboard"]
