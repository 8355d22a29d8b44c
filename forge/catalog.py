"""The signal catalog: canonical signals, where each engine exposes them, and how derived ones are computed.

The data lives in ``forge/data/signals.yaml``; this module loads it once, checks it is consistent (a broken
catalog fails loudly at import time of the first user, not as a silent missing series), and answers lookups:

    >>> from forge import catalog
    >>> catalog.resolve("ttft").name
    'forge_ttft_seconds'
    >>> "kv_cache_usage" in catalog.signal_aliases()
    True

``python -m forge.catalog --markdown`` renders ``docs/signals.md``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from forge.yamlio import safe_load

from forge.errors import InputError

CATALOG_PATH = Path(__file__).parent / "data" / "signals.yaml"

SIGNAL_TYPES = ("counter", "gauge", "histogram")
SCOPES = ("engine", "gpu", "exporter", "cost")
# Scopes whose series the Forge exporter itself writes (no engine source maps onto them).
FORGE_WRITTEN_SCOPES = ("exporter", "cost")
AGGREGATES = ("sum", "max")
# Labels every canonical engine series carries; nothing else may claim these names.
BASE_LABELS = ("engine", "model", "replica")
DEFAULT_BY = "engine, model, replica"
DEFAULT_WINDOW = "5m"

_SELECTOR = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?$")
_CANONICAL_NAME_IN_EXPR = re.compile(r"\b(forge_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\b")


class CatalogError(Exception):
    """The catalog file itself is inconsistent (a developer's mistake, reported with the offending key)."""


class UnknownSignalError(InputError):
    """A user named a signal the catalog doesn't know."""


@dataclass(frozen=True)
class Selector:
    """A metric name plus exact label matches, e.g. ``nv_trt_llm_request_metrics{request_type=active}``."""

    metric: str
    match: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, where: str) -> "Selector":
        found = _SELECTOR.match(text.strip())
        if not found:
            raise CatalogError(f"{where}: {text!r} is not `name` or `name{{label=value,...}}`")
        match: dict[str, str] = {}
        for pair in filter(None, (found["labels"] or "").split(",")):
            key, _, value = pair.partition("=")
            match[key.strip()] = value.strip().strip('"')
        return cls(found["name"], match)

    def __str__(self) -> str:
        if not self.match:
            return self.metric
        return self.metric + "{" + ",".join(f"{k}={v}" for k, v in sorted(self.match.items())) + "}"


@dataclass(frozen=True)
class DerivedLabel:
    name: str
    source_label: str
    value_map: Mapping[str, str]
    default: str


@dataclass(frozen=True)
class SourceMapping:
    """How one dialect exposes (part of) one canonical signal."""

    dialect: str
    selector: Selector | None                   # None for ratio mappings
    ratio: tuple[Selector, Selector] | None     # (numerator, denominator)
    cite: str
    labels: Mapping[str, str] = field(default_factory=dict)       # source label -> canonical label
    set_labels: Mapping[str, str] = field(default_factory=dict)
    derive_label: DerivedLabel | None = None
    scale: float = 1.0
    only_if_absent: tuple[Selector, ...] = ()
    approximate: bool = False
    note: str = ""
    versions: str = ""

    def describe(self) -> str:
        """One human line, e.g. ``vllm:kv_cache_usage_perc`` or ``used / max`` for a ratio."""
        text = f"{self.ratio[0]} / {self.ratio[1]}" if self.ratio else str(self.selector)
        extras = []
        if self.scale != 1.0:
            extras.append(f"×{self.scale:g}")
        if self.versions:
            extras.append(self.versions)
        if self.approximate:
            extras.append("≈")
        return text + (f" ({', '.join(extras)})" if extras else "")


@dataclass(frozen=True)
class Signal:
    name: str
    type: str
    unit: str
    help: str
    scope: str = "engine"
    labels: tuple[str, ...] = ()
    aggregate: str = "sum"
    otel: Mapping[str, Any] | None = None
    sources: Mapping[str, tuple[SourceMapping, ...]] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    provided_by: str = ""

    @property
    def otel_name(self) -> str | None:
        return self.otel["name"] if self.otel else None


@dataclass(frozen=True)
class DerivedSignal:
    name: str
    unit: str
    help: str
    expr_template: str

    def expr(self, window: str = DEFAULT_WINDOW, by: str = DEFAULT_BY) -> str:
        """The PromQL expression for a rate window and grouping, e.g. ``expr("1m", "engine, model")``."""
        return self.expr_template.replace("{window}", window).replace("{by}", by)

    def inputs(self) -> set[str]:
        """Canonical series names the expression reads (``_bucket``/``_sum``/``_count`` folded to the signal)."""
        return set(_CANONICAL_NAME_IN_EXPR.findall(self.expr_template))


@dataclass(frozen=True)
class Dialect:
    id: str
    title: str
    engine: str | None
    detect: tuple[str, ...]
    model_label: str | None
    only_models_in: str | None = None   # use only samples of models that also appear in families with this prefix


@dataclass(frozen=True)
class Catalog:
    signals: Mapping[str, Signal]
    derived: Mapping[str, DerivedSignal]
    dialects: Mapping[str, Dialect]
    aliases: Mapping[str, str]
    citations: Mapping[str, Mapping[str, str]]
    gpu_labels: tuple[str, ...]

    def get(self, name_or_alias: str) -> Signal | DerivedSignal:
        """A signal by canonical name or deploy.yaml alias; UnknownSignalError (one line) otherwise."""
        name = self.aliases.get(name_or_alias, name_or_alias)
        if name in self.signals:
            return self.signals[name]
        if name in self.derived:
            return self.derived[name]
        suggestion = _closest(name_or_alias, [*self.aliases, *self.signals, *self.derived])
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise UnknownSignalError(
            f"unknown signal {name_or_alias!r}{hint} — `forge catalog list` shows the names")

    def aliases_for(self, name: str) -> list[str]:
        return sorted(alias for alias, target in self.aliases.items() if target == name)

    def signals_in_scope(self, scope: str) -> list[Signal]:
        return [s for s in self.signals.values() if s.scope == scope]


def _closest(word: str, candidates: list[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


# ----------------------------------------------------------------------------------------------- loading

def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] in (None, ""):
        raise CatalogError(f"{where}: missing `{key}`")
    return mapping[key]


def _load_source(raw: Mapping[str, Any], dialect: str, where: str, citations: Mapping[str, Any]) -> SourceMapping:
    known = {"metric", "match", "ratio", "cite", "labels", "set_labels", "derive_label", "scale",
             "only_if_absent", "approximate", "note", "versions"}
    unknown = set(raw) - known
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {sorted(unknown)}")
    cite = _require(raw, "cite", where)
    if cite not in citations:
        raise CatalogError(f"{where}: cites {cite!r}, which is not under `citations`")
    selector = ratio = None
    if "ratio" in raw:
        parts = [Selector(r["metric"], dict(r.get("match") or {})) for r in
                 (_require(raw["ratio"], "numerator", where), _require(raw["ratio"], "denominator", where))]
        ratio = (parts[0], parts[1])
    else:
        selector = Selector(_require(raw, "metric", where), dict(raw.get("match") or {}))
    derived = None
    if raw.get("derive_label"):
        d = raw["derive_label"]
        derived = DerivedLabel(_require(d, "name", where), _require(d, "from", where),
                               dict(d.get("map") or {}), str(_require(d, "default", where)))
    scale = float(raw.get("scale", 1.0))
    if scale <= 0:
        raise CatalogError(f"{where}: scale must be positive")
    return SourceMapping(
        dialect=dialect, selector=selector, ratio=ratio, cite=cite,
        labels=dict(raw.get("labels") or {}), set_labels=dict(raw.get("set_labels") or {}),
        derive_label=derived, scale=scale,
        only_if_absent=tuple(Selector.parse(s, where) for s in raw.get("only_if_absent") or ()),
        approximate=bool(raw.get("approximate", False)), note=str(raw.get("note", "")),
        versions=str(raw.get("versions", "")))


def _load_signal(name: str, raw: Mapping[str, Any], dialects: Mapping[str, Dialect],
                 citations: Mapping[str, Any]) -> Signal:
    where = f"signals.{name}"
    kind = _require(raw, "type", where)
    if kind not in SIGNAL_TYPES:
        raise CatalogError(f"{where}: type {kind!r} is not one of {SIGNAL_TYPES}")
    scope = raw.get("scope", "engine")
    if scope not in SCOPES:
        raise CatalogError(f"{where}: scope {scope!r} is not one of {SCOPES}")
    aggregate = raw.get("aggregate", "sum")
    if aggregate not in AGGREGATES or (kind != "gauge" and aggregate != "sum"):
        raise CatalogError(f"{where}: aggregate {aggregate!r} — counters and histograms only add up (sum)")
    # Prometheus naming: counters end in _total, and engine-scope latency histograms carry their base unit.
    if scope != "gpu" and kind == "counter" and not name.endswith("_total"):
        raise CatalogError(f"{where}: a counter's name must end in _total")
    if scope != "gpu" and not name.startswith("forge_"):
        raise CatalogError(f"{where}: canonical engine, exporter and cost signals are named forge_*")
    # Exporter and cost signals are the exporter's own series (scrape health, build, price): nothing maps onto them.
    if scope in FORGE_WRITTEN_SCOPES and (raw.get("sources") or raw.get("unavailable") or not raw.get("provided_by")):
        raise CatalogError(f"{where}: an {scope} signal has no sources/unavailable and names its provided_by")
    labels = tuple(raw.get("labels") or ())
    clash = set(labels) & set(BASE_LABELS)
    if clash:
        raise CatalogError(f"{where}: labels {sorted(clash)} are reserved")
    sources: dict[str, tuple[SourceMapping, ...]] = {}
    for dialect, entries in (raw.get("sources") or {}).items():
        if dialect not in dialects:
            raise CatalogError(f"{where}.sources: unknown dialect {dialect!r}")
        mappings = tuple(_load_source(e, dialect, f"{where}.sources.{dialect}[{i}]", citations)
                         for i, e in enumerate(entries))
        for m in mappings:
            produced = set(m.labels.values()) | set(m.set_labels) | ({m.derive_label.name} if m.derive_label else set())
            stray = produced - set(labels)
            if stray:
                raise CatalogError(f"{where}.sources.{dialect}: produces label(s) {sorted(stray)} the signal "
                                   f"doesn't declare under `labels`")
        sources[dialect] = mappings
    unavailable = dict(raw.get("unavailable") or {})
    for dialect in unavailable:
        if dialect not in dialects:
            raise CatalogError(f"{where}.unavailable: unknown dialect {dialect!r}")
        if dialect in sources:
            raise CatalogError(f"{where}: dialect {dialect!r} is both mapped and unavailable")
    return Signal(name=name, type=kind, unit=_require(raw, "unit", where), help=_require(raw, "help", where),
                  scope=scope, labels=labels, aggregate=aggregate, otel=raw.get("otel"), sources=sources,
                  unavailable=unavailable, provided_by=str(raw.get("provided_by", "")))


def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    """Load and validate a catalog file. Raises CatalogError naming the inconsistent key."""
    try:
        raw = safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise CatalogError(f"{path}: not a mapping")
    citations = dict(_require(raw, "citations", "catalog"))
    for key, cite in citations.items():
        for needed in ("repo", "path"):
            _require(cite, needed, f"citations.{key}")
    dialects = {
        key: Dialect(id=key, title=_require(d, "title", f"dialects.{key}"), engine=d.get("engine"),
                     detect=tuple(_require(d, "detect", f"dialects.{key}")), model_label=d.get("model_label"),
                     only_models_in=d.get("only_models_in"))
        for key, d in _require(raw, "dialects", "catalog").items()
    }
    signals = {name: _load_signal(name, body, dialects, citations)
               for name, body in _require(raw, "signals", "catalog").items()}
    derived = {
        name: DerivedSignal(name=name, unit=_require(d, "unit", f"derived.{name}"),
                            help=_require(d, "help", f"derived.{name}"),
                            expr_template=" ".join(str(_require(d, "expr", f"derived.{name}")).split()))
        for name, d in (raw.get("derived") or {}).items()
    }
    for d in derived.values():
        unknown = d.inputs() - set(signals)
        if unknown:
            raise CatalogError(f"derived.{d.name}: reads unknown signal(s) {sorted(unknown)}")
    aliases = dict(raw.get("aliases") or {})
    for alias, target in aliases.items():
        if target not in signals and target not in derived:
            raise CatalogError(f"aliases.{alias}: points at unknown signal {target!r}")
    return Catalog(signals=signals, derived=derived, dialects=dialects, aliases=aliases,
                   citations=citations, gpu_labels=tuple(raw.get("gpu_labels") or ()))


@lru_cache(maxsize=1)
def get_catalog() -> Catalog:
    """The packaged catalog, loaded once per process."""
    return load_catalog()


def signal_aliases() -> set[str]:
    """The short names deploy.yaml may list under ``observability.signals``."""
    return set(get_catalog().aliases)


def resolve(alias: str) -> Signal | DerivedSignal:
    """A deploy.yaml alias (or a canonical name) -> its signal; UnknownSignalError otherwise."""
    return get_catalog().get(alias)


# ----------------------------------------------------------------------------------------------- docs

def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(catalog: Catalog | None = None) -> str:
    """``docs/signals.md``: every signal with its sources per dialect, derived signals, aliases, citations."""
    cat = catalog or get_catalog()
    engine_dialects = [d for d in cat.dialects.values() if d.engine]
    out = ["# Forge signals", "",
           "<!-- Generated by `python -m forge.catalog --markdown > docs/signals.md` from "
           "forge/data/signals.yaml. Do not edit by hand: a test compares it with a fresh rendering. -->", "",
           "Every dashboard, alert and readiness check reads these canonical names; the exporter maps each "
           "engine's own metrics onto them and adds the labels `engine`, `model`, `replica` (plus deploy.yaml's "
           "`team` / `cost_center`). Histograms stay histograms, in seconds. `≈` marks a source that measures "
           "something close to, not exactly, the signal; `—` means the engine doesn't expose it.", "",
           "## Dialects", "", "| Dialect | Engine label | Reads |", "|---|---|---|",
           *[f"| `{d.id}` | `{d.engine or ''}` | {_md(d.title)} |" for d in cat.dialects.values()],
           "", "## Engine signals", "",
           "| Signal | Type | Unit | Meaning | OpenTelemetry | " + " | ".join(f"`{d.id}`" for d in engine_dialects) + " |",
           "|" + "---|" * (5 + len(engine_dialects))]
    for sig in cat.signals_in_scope("engine"):
        cells = []
        for d in engine_dialects:
            if d.id in sig.sources:
                cells.append("<br>".join(f"`{_md(m.describe())}`" for m in sig.sources[d.id]))
            else:
                cells.append("—")
        labels = f" `{{{', '.join(sig.labels)}}}`" if sig.labels else ""
        otel = f"`{sig.otel_name}`" if sig.otel_name else ""
        out.append(f"| `{sig.name}`{labels} | {sig.type} | {sig.unit} | {_md(sig.help)} | {otel} | "
                   + " | ".join(cells) + " |")
    out += ["", "### Notes on engine sources", ""]
    for sig in cat.signals_in_scope("engine"):
        for mappings in sig.sources.values():
            for m in mappings:
                if m.note:
                    out.append(f"- `{sig.name}` ← {cat.dialects[m.dialect].title}: {_md(m.note)}.")
        for dialect, why in sig.unavailable.items():
            out.append(f"- `{sig.name}` — {cat.dialects[dialect].title}: {_md(why)}.")
    exporter = cat.signals_in_scope("exporter")
    if exporter:
        out += ["", "## Exporter signals", "", "| Signal | Type | Meaning | Provided by |", "|---|---|---|---|"]
        out += [f"| `{s.name}` | {s.type} | {_md(s.help)} | {_md(s.provided_by)} |" for s in exporter]
    cost = cat.signals_in_scope("cost")
    if cost:
        out += ["", "## Cost signals", "",
                "Written by the exporter's cost collector (forge/exporters/cost.py) for every replica with a known "
                "price; labels `replica`, `model`, `team`, `cost_center` plus those listed. The cost recording "
                "rules and alerts (alerts/README.md) read them with the engine counters.", "",
                "| Signal | Type | Unit | Meaning | Provided by |", "|---|---|---|---|---|"]
        out += [f"| `{s.name}`" + (f" `{{{', '.join(s.labels)}}}`" if s.labels else "")
                + f" | {s.type} | {s.unit} | {_md(s.help)} | {_md(s.provided_by)} |" for s in cost]
    out += ["", "## GPU signals (DCGM field names)", "",
            "Names and labels are dcgm-exporter's, so dashboards work the same with a dcgm-exporter sidecar or "
            "Forge's NVML collector. Labels: " + ", ".join(f"`{l}`" for l in cat.gpu_labels) + ".", "",
            "| Field | Type | Unit | Meaning | Source |", "|---|---|---|---|---|"]
    for sig in cat.signals_in_scope("gpu"):
        cite = sig.sources["dcgm"][0].cite
        out.append(f"| `{sig.name}` | {sig.type} | {sig.unit} | {_md(sig.help)} | {cite} |")
    out += ["", "## Derived signals", "",
            "PromQL over canonical names; `{window}` is the rate window (default "
            f"`{DEFAULT_WINDOW}`), `{{by}}` the grouping (default `{DEFAULT_BY}`).", "",
            "| Signal | Unit | Meaning | Expression |", "|---|---|---|---|"]
    for d in cat.derived.values():
        out.append(f"| `{d.name}` | {d.unit} | {_md(d.help)} | `{_md(d.expr_template)}` |")
    out += ["", "## Aliases (deploy.yaml `observability.signals`)", "", "| Alias | Signal |", "|---|---|"]
    out += [f"| `{alias}` | `{target}` |" for alias, target in sorted(cat.aliases.items())]
    out += ["", "## Where the names come from", "", "| Key | Repository | Path | Commit | Note |",
            "|---|---|---|---|---|"]
    for key, c in cat.citations.items():
        out.append(f"| {key} | {c['repo']} | `{_md(c['path'])}` | {_md(c.get('commit', ''))} | "
                   f"{_md(c.get('note', ''))} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--markdown"]:
        sys.stderr.write("usage: python -m forge.catalog --markdown > docs/signals.md\n")
        return 2
    sys.stdout.write(render_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
