"""Turn one engine's /metrics page into canonical Forge series, through the signal catalog.

    page = normalize(text, replica="chat-0", extra_labels={"team": "search"})
    page.families["forge_ttft_seconds"].series      # {labels: Histogram(...)}
    page.to_prometheus_text()                         # re-exposable exposition text

Only the catalog knows engine metric names; this module knows the exposition format. Anything that is not
a Prometheus text page (HTML, binary, truncated lines) raises NormalizeError with one line saying why.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from forge.catalog import BASE_LABELS, Catalog, Selector, Signal, SourceMapping, get_catalog
from forge.errors import InputError

LabelKey = tuple[tuple[str, str], ...]
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_MESSAGE_LIMIT = 160


class NormalizeError(InputError):
    """The page can't be normalized (not Prometheus text, unknown engine, bad labels); one line each.

    `reason` is a short, fixed token (invalid_page, unknown_engine, duplicate_series, bad_option) that the
    exporter exports as a label value; the message is for people.
    """

    def __init__(self, messages: str | list[str], reason: str = "invalid_page"):
        super().__init__(messages)
        self.reason = reason


@dataclass
class Histogram:
    """Cumulative buckets as (upper bound, count), +Inf last, plus sum and count — Prometheus semantics."""

    buckets: list[tuple[float, float]]
    sum: float
    count: float

    def bounds(self) -> tuple[float, ...]:
        return tuple(le for le, _ in self.buckets)


@dataclass
class CanonicalFamily:
    name: str
    type: str
    help: str
    series: dict[LabelKey, float | Histogram] = field(default_factory=dict)

    def only(self) -> float | Histogram:
        """The single series' value (tests and single-replica callers); ValueError when there are several."""
        if len(self.series) != 1:
            raise ValueError(f"{self.name} has {len(self.series)} series, not one")
        return next(iter(self.series.values()))


@dataclass
class NormalizedPage:
    dialect: str
    engine: str | None
    families: dict[str, CanonicalFamily]
    missing: list[str]                  # signals this dialect maps but the page didn't carry
    unavailable: dict[str, str]         # signals this dialect can't provide, and why
    problems: list[str]                 # series skipped (conflicts), one line each

    def to_prometheus_text(self) -> str:
        return render_families(self.families.values())


def render_families(families: Iterable[CanonicalFamily]) -> str:
    """Prometheus text exposition (0.0.4) of canonical families, names and label keys sorted."""
    # One string per family, joined once: a 1,000-target page is ~200,000 lines, and a list of line objects
    # would cost more memory than the text itself.
    chunks: list[str] = []
    for family in sorted(families, key=lambda f: f.name):
        name = family.name
        lines = [f"# HELP {name} {family.help}", f"# TYPE {name} {family.type}"]
        for key in sorted(family.series):
            value = family.series[key]
            if isinstance(value, Histogram):
                for le, count in value.buckets:
                    lines.append(_sample(f"{name}_bucket", key + (("le", floatToGoString(le)),), count))
                lines.append(_sample(f"{name}_sum", key, value.sum))
                lines.append(_sample(f"{name}_count", key, value.count))
            else:
                lines.append(_sample(name, key, value))
        lines.append("")
        chunks.append("\n".join(lines))
        del lines
    if not chunks:
        return "\n"
    return "".join(chunks)


def _sample(name: str, key: LabelKey, value: float) -> str:
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
    return f"{name}{{{labels}}} {floatToGoString(value)}" if labels else f"{name} {floatToGoString(value)}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# ----------------------------------------------------------------------------------------------- parsing

@dataclass
class _RawFamily:
    name: str
    type: str
    samples: list[tuple[str, dict[str, str], float]]


@dataclass
class _Page:
    families: dict[str, _RawFamily]
    samples_by_name: dict[str, list[tuple[dict[str, str], float]]]

    def has(self, selector: Selector) -> bool:
        if selector.metric in self.families and self.families[selector.metric].type == "histogram":
            return True
        return any(_matches(labels, selector.match) for labels, _ in self.samples_by_name.get(selector.metric, ()))


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT - 1] + "…"


def parse_page(text: str, *, engine: str | None = None, catalog: Catalog | None = None,
               parser: str = "fast") -> _Page:
    """Parse Prometheus text exposition; NormalizeError for anything else.

    parser="fast" (the default) reads plain exposition lines itself and keeps samples only of the families the
    catalog maps for the page's engine (`engine`, or the detected one); a page it isn't sure of (exemplars,
    OpenMetrics, unusual escapes or spacing) is parsed by prometheus_client instead, so the result and every
    error are the same either way. parser="prometheus_client" always uses prometheus_client and keeps every
    family (the reference the fast parser is tested against).
    """
    _check_page_kind(text)
    if parser == "fast":
        try:
            return _parse_fast(text, engine, catalog or get_catalog())
        except _Unusual:
            pass  # something only prometheus_client's parser handles: let it decide, errors included
    elif parser != "prometheus_client":
        raise ValueError(f"parser {parser!r}: use 'fast' or 'prometheus_client'")
    return _parse_reference(text)


def _check_page_kind(text: str) -> None:
    if not isinstance(text, str):
        raise NormalizeError("metrics page: expected text, got bytes — decode it as UTF-8 first")
    if "\x00" in text:
        raise NormalizeError("metrics page: binary data, not a Prometheus text page")
    stripped = text.lstrip()
    if not stripped:
        raise NormalizeError("metrics page: empty — is the engine started with metrics enabled?")
    if stripped.startswith("<"):
        raise NormalizeError("metrics page: HTML, not Prometheus text — check the URL path (e.g. /metrics)")
    if stripped.startswith(("{", "[")):
        raise NormalizeError("metrics page: JSON, not Prometheus text — trtllm-serve's /metrics is JSON; "
                             "scrape /prometheus/metrics")


def _type_conflict(name: str, first: str, second: str) -> NormalizeError:
    return NormalizeError(f"metrics page: {name} is declared both {first} and {second} "
                          f"— conflicting series; fix the engine's exporter", reason="duplicate_series")


def _duplicate(series: tuple[str, LabelKey]) -> NormalizeError:
    labels = ",".join(f'{k}="{v}"' for k, v in series[1])
    return NormalizeError(_one_line(f"metrics page: series {series[0]}{{{labels}}} appears more than once — a "
                                    f"page lists each series once; nothing from it is exported"),
                          reason="duplicate_series")


def _parse_reference(text: str) -> _Page:
    """prometheus_client's parser, every family kept."""
    families: dict[str, _RawFamily] = {}
    samples_by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    # A series listed twice would be added up by the mapping (a false value), so such a page is refused.
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    try:
        for family in text_string_to_metric_families(text):
            raw = families.setdefault(family.name, _RawFamily(family.name, family.type, []))
            if raw.type != family.type:
                raise _type_conflict(family.name, raw.type, family.type)
            for sample in family.samples:
                series = (sample.name, tuple(sorted(sample.labels.items())))
                if series in seen_series:
                    raise _duplicate(series)
                seen_series.add(series)
                raw.samples.append((sample.name, dict(sample.labels), float(sample.value)))
                samples_by_name[sample.name].append((dict(sample.labels), float(sample.value)))
                # The parser appends _total to counters that lack it (TGI's tgi_request_success); keep
                # the name as exposed reachable too, since that's how the catalog spells it.
                if family.type == "counter" and sample.name == family.name + "_total":
                    samples_by_name[family.name].append((dict(sample.labels), float(sample.value)))
    except NormalizeError:
        raise
    except Exception as exc:  # the parser raises ValueError, IndexError, … on malformed input
        raise NormalizeError(f"metrics page: not valid Prometheus text ({_one_line(exc) or type(exc).__name__})") from None
    if not families:
        raise NormalizeError("metrics page: no samples — is the engine started with metrics enabled?")
    return _Page(families, samples_by_name)


# --------------------------------------------------------------------------------- the fast parser
#
# It accepts only a strict subset of what prometheus_client accepts, and reads that subset the same way
# (line splitting, family grouping, counter `_total` naming, escapes, int-vs-float values); anything else raises
# _Unusual and the page goes to prometheus_client. tests/test_catalog_normalize.py holds the two to equality.

class _Unusual(Exception):
    """A line the fast parser leaves to prometheus_client."""


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'(?:[^"\\]|\\[\\"n])*'          # only the three escapes the format defines
_LABEL = r'[a-zA-Z][a-zA-Z0-9_]*="' + _LABEL_VALUE + r'"|_[a-zA-Z0-9][a-zA-Z0-9_]*="' + _LABEL_VALUE + r'"'
_VALUE = (r"[-+]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][-+]?[0-9]{1,3})?"
          r"|[-+]?Inf|NaN")
_SAMPLE_LINE = re.compile(rf"({_NAME})(?:\{{((?:{_LABEL})(?:,(?:{_LABEL}))*,?|)\}})? +({_VALUE})(?: +-?[0-9]{{1,20}})?")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(' + _LABEL_VALUE + ')"')
_COMMENT_LINE = re.compile(rf"# (HELP|TYPE) ({_NAME})(?:[ \t]+(.*))?")
_words = re.compile(r"[ \t\n\r\x0b\x0c]+").split     # string.whitespace, as prometheus_client splits
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_SUFFIXES = {"counter": ("",), "gauge": ("",), "summary": ("_count", "_sum", ""),
             "histogram": ("_count", "_sum", "_bucket"), "untyped": ("",), "unknown": ("",)}


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(0)], value) if "\\" in value else value


# (sample name, labels as written — values still escaped — or None, value as written)
_RawSample = tuple[str, "dict[str, str] | None", str]


def _tokenize(text: str) -> list[tuple[str, str, list[_RawSample]]]:
    """Families in page order, grouped exactly as prometheus_client groups them; _Unusual for anything else."""
    out: list[tuple[str, str, list[_RawSample]]] = []
    name, typ, samples, allowed = "", "untyped", [], ()
    sample_line, pair, comment_line = _SAMPLE_LINE.fullmatch, _LABEL_PAIR.findall, _COMMENT_LINE.fullmatch
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        if line[0] == "#":
            found = comment_line(line)
            if found is None:
                # prometheus_client reads a comment whose second word is HELP or TYPE as one
                if ("HELP" in line or "TYPE" in line) and ('"' in line or _words(line, 2)[1:2] in (["HELP"], ["TYPE"])):
                    raise _Unusual(line)
                continue  # a plain comment
            kind, candidate, rest = found.groups()
            if kind == "HELP":
                if candidate != name:
                    if name:
                        out.append((name, typ, samples))
                    name, typ, samples, allowed = candidate, "untyped", [], (candidate,)
            else:
                if rest not in _SUFFIXES:
                    raise _Unusual(line)
                if candidate != name:
                    if name:
                        out.append((name, typ, samples))
                    name, samples = candidate, []
                typ = rest
                allowed = tuple(name + suffix for suffix in _SUFFIXES[typ])
            continue
        found = sample_line(line)
        if found is None:
            raise _Unusual(line)
        sample_name, label_text, value = found.groups()
        labels = None
        if label_text:
            pairs = pair(label_text)
            labels = dict(pairs)
            if len(labels) != len(pairs):
                raise _Unusual(line)  # a label given twice: prometheus_client's error message
            if "\\" in label_text:
                labels = {k: _unescape(v) for k, v in labels.items()}
        if sample_name in allowed:
            samples.append((sample_name, labels, value))
        else:  # prometheus_client makes such a sample an untyped family of its own
            if name:
                out.append((name, typ, samples))
            name, typ, samples, allowed = "", "untyped", [], ()
            out.append((sample_name, "untyped", [(sample_name, labels, value)]))
    if name:
        out.append((name, typ, samples))
    # prometheus_client's naming: counter family `x` for `x_total`, `_total` added where it is missing, and
    # "untyped" called "unknown"
    for i, (name, typ, samples) in enumerate(out):
        if typ == "counter":
            if name == "_total":
                raise _Unusual(name)  # an empty family name: prometheus_client's error
            if name.endswith("_total"):
                out[i] = (name[:-6], typ, samples)
            else:
                out[i] = (name, typ, [(sample_name + "_total", labels, value) for sample_name, labels, value in samples])
        elif typ == "untyped":
            out[i] = (name, "unknown", samples)
    return out


def _float(value: str) -> float:
    number = float(value)
    if number == 0.0 and value[0] == "-" and value[1:].isdigit():
        return 0.0  # prometheus_client reads "-0" as the int 0, not -0.0
    return number


def _parse_fast(text: str, engine: str | None, catalog: Catalog) -> _Page:
    tokens = _tokenize(text)
    if engine not in catalog.dialects:
        engine = _best_dialect({name for name, _, _ in tokens}, catalog)
    wanted, prefix = _wanted_names(catalog, engine)
    families: dict[str, _RawFamily] = {}
    samples_by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    seen_series: set[tuple[str, LabelKey]] = set()
    # Every line is read by now, so the errors below come in the order prometheus_client's reading gives them.
    for family_name, family_type, samples in tokens:
        raw = families.setdefault(family_name, _RawFamily(family_name, family_type, []))
        if raw.type != family_type:
            raise _type_conflict(family_name, raw.type, family_type)
        keep = (family_name in wanted or (prefix is not None and family_name.startswith(prefix))
                or any(name in wanted for name, _, _ in samples))
        total_name = family_name + "_total" if family_type == "counter" else None
        for sample_name, labels, value in samples:
            if labels:
                series = (sample_name, tuple(sorted(labels.items())))
            else:
                labels, series = {}, (sample_name, ())
            if series in seen_series:
                raise _duplicate(series)
            seen_series.add(series)
            if keep:  # families the catalog doesn't map for this engine are checked, never stored
                number = _float(value)
                raw.samples.append((sample_name, labels, number))
                samples_by_name[sample_name].append((labels, number))
                if sample_name == total_name:
                    samples_by_name[family_name].append((labels, number))
    if not families:
        raise NormalizeError("metrics page: no samples — is the engine started with metrics enabled?")
    return _Page(families, samples_by_name)


_WANTED_CACHE: dict[tuple[int, str | None], tuple[Catalog, frozenset[str], str | None]] = {}


def _wanted_names(catalog: Catalog, dialect_id: str | None) -> tuple[frozenset[str], str | None]:
    """Sample and family names the catalog reads for one dialect, and the dialect's only_models_in prefix."""
    cached = _WANTED_CACHE.get((id(catalog), dialect_id))
    if cached is not None and cached[0] is catalog:
        return cached[1], cached[2]
    names: set[str] = set()
    prefix = None
    if dialect_id is not None:
        dialect = catalog.dialects[dialect_id]
        prefix = dialect.only_models_in if dialect.model_label else None
        for signal in catalog.signals.values():
            for mapping in signal.sources.get(dialect_id, ()):
                selectors = [*(mapping.ratio or ()), *mapping.only_if_absent]
                if mapping.selector is not None:
                    selectors.append(mapping.selector)
                names.update(s.metric for s in selectors)
    _WANTED_CACHE[(id(catalog), dialect_id)] = (catalog, frozenset(names), prefix)
    return frozenset(names), prefix


def detect_dialect(page: _Page, catalog: Catalog | None = None) -> str:
    """The dialect whose name prefixes cover most families of the page."""
    cat = catalog or get_catalog()
    best = _best_dialect(page.families, cat)
    if best is None:
        prefixes = ", ".join(p for d in cat.dialects.values() for p in d.detect)
        raise NormalizeError(f"metrics page: no known engine or GPU metrics (expected names starting with "
                             f"{prefixes}) — pass the engine explicitly if it is renamed", reason="unknown_engine")
    return best


def _best_dialect(names: Iterable[str], catalog: Catalog) -> str | None:
    names = list(names)
    scores = {d.id: sum(1 for name in names if name.startswith(d.detect)) for d in catalog.dialects.values()}
    best = max(scores, key=lambda d: scores[d])
    return best if scores[best] else None


# ----------------------------------------------------------------------------------------------- mapping

def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class _Builder:
    """Accumulates canonical series for one signal, combining series that coincide after label mapping."""

    def __init__(self, signal: Signal, problems: list[str]):
        self.signal = signal
        self.series: dict[LabelKey, float | Histogram] = {}
        self.problems = problems

    def add_value(self, key: LabelKey, value: float) -> None:
        if math.isnan(value):
            return  # an engine's NaN is "no data", never a value we re-export
        if key not in self.series:
            self.series[key] = value
        elif self.signal.aggregate == "max":
            self.series[key] = max(self.series[key], value)
        else:
            self.series[key] += value

    def add_histogram(self, key: LabelKey, hist: Histogram) -> None:
        existing = self.series.get(key)
        if existing is None:
            self.series[key] = hist
            return
        if existing.bounds() != hist.bounds():
            self.problems.append(f"{self.signal.name}: series {dict(key)} have different bucket bounds; "
                                 f"kept the first, dropped the other")
            return
        existing.buckets = [(le, a + b) for (le, a), (_, b) in zip(existing.buckets, hist.buckets)]
        existing.sum += hist.sum
        existing.count += hist.count


class _Normalizer:
    def __init__(self, catalog: Catalog, dialect: str, page: _Page, base: Mapping[str, str],
                 model_override: str | None):
        self.catalog = catalog
        self.dialect = catalog.dialects[dialect]
        self.page = page
        self.base = base
        self.model_override = model_override
        self.problems: list[str] = []
        self.allowed_models: set[str] | None = None
        if self.dialect.only_models_in and self.dialect.model_label:
            self.allowed_models = {
                labels.get(self.dialect.model_label, "")
                for family in page.families.values() if family.name.startswith(self.dialect.only_models_in)
                for _, labels, _ in family.samples}

    def wanted(self, labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
        if not _matches(labels, match):
            return False
        return self.allowed_models is None or labels.get(self.dialect.model_label, "") in self.allowed_models

    def key_for(self, signal: Signal, mapping: SourceMapping, labels: Mapping[str, str]) -> LabelKey:
        out = dict(self.base)
        if signal.scope == "engine":
            model_label = self.dialect.model_label
            out["model"] = self.model_override or (labels.get(model_label) if model_label else None) or "unknown"
        for source_label, canonical in mapping.labels.items():
            if source_label in labels:
                out[canonical] = labels[source_label]
        if signal.scope == "gpu":
            for name in self.catalog.gpu_labels:
                if name in labels:
                    out[name] = labels[name]
        out.update(mapping.set_labels)
        if mapping.derive_label:
            d = mapping.derive_label
            out[d.name] = d.value_map.get(labels.get(d.source_label, ""), d.default)
        # An empty label value is the same as no label in Prometheus; don't emit it.
        return _intern_key(tuple(sorted((k, v) for k, v in out.items() if v != "")))

    def scalar_samples(self, selector: Selector) -> Iterable[tuple[dict[str, str], float]]:
        for labels, value in self.page.samples_by_name.get(selector.metric, ()):
            if self.wanted(labels, selector.match):
                yield labels, value

    def histograms(self, selector: Selector, scale: float) -> Iterable[tuple[dict[str, str], Histogram]]:
        family = self.page.families.get(selector.metric)
        if family is None or family.type != "histogram":
            return
        grouped: dict[LabelKey, dict] = defaultdict(lambda: {"buckets": [], "sum": None, "count": None})
        for name, labels, value in family.samples:
            plain = {k: v for k, v in labels.items() if k != "le"}
            if not self.wanted(plain, selector.match):
                continue
            slot = grouped[tuple(sorted(plain.items()))]
            if name.endswith("_bucket") and "le" in labels:
                slot["buckets"].append((_bound(labels["le"], scale), value))
            elif name.endswith("_sum"):
                slot["sum"] = value * scale
            elif name.endswith("_count"):
                slot["count"] = value
        for key, slot in grouped.items():
            buckets = sorted(slot["buckets"])
            if not buckets or not math.isinf(buckets[-1][0]) or slot["count"] is None:
                self.problems.append(f"{selector.metric}: series {dict(key)} lacks a +Inf bucket or a count; skipped")
                continue
            yield dict(key), Histogram(buckets, slot["sum"] or 0.0, slot["count"])

    def usable(self, mapping: SourceMapping) -> bool:
        return not any(self.page.has(s) for s in mapping.only_if_absent)

    def build(self, signal: Signal) -> dict[LabelKey, float | Histogram] | None:
        """Canonical series for one signal; None when no source of this dialect is on the page, {} when
        every source is superseded by a newer name that is."""
        builder = _Builder(signal, self.problems)
        found = False
        mappings = signal.sources.get(self.dialect.id, ())
        if not any(self.usable(m) for m in mappings):
            return {}  # superseded by newer names on this page: neither found nor missing
        for mapping in mappings:
            if not self.usable(mapping):
                continue
            if mapping.ratio:
                found |= self._ratio(signal, mapping, builder)
            elif signal.type == "histogram":
                for labels, hist in self.histograms(mapping.selector, mapping.scale):
                    found = True
                    builder.add_histogram(self.key_for(signal, mapping, labels), hist)
            else:
                for labels, value in self.scalar_samples(mapping.selector):
                    found = True
                    builder.add_value(self.key_for(signal, mapping, labels), value * mapping.scale)
        return builder.series if found else None

    def _ratio(self, signal: Signal, mapping: SourceMapping, builder: _Builder) -> bool:
        numerator, denominator = mapping.ratio
        denominators = {self.key_for(signal, mapping, labels): value
                        for labels, value in self.scalar_samples(denominator)}
        found = False
        for labels, value in self.scalar_samples(numerator):
            key = self.key_for(signal, mapping, labels)
            if denominators.get(key):  # a zero or missing denominator gives no value, never a false 0 or inf
                builder.add_value(key, value / denominators[key])
                found = True
        return found


# Every target repeats the same label pairs (engine, team, model) and bucket bounds, cycle after cycle; sharing
# one object for each keeps 1,000 targets' series from holding 1,000 copies. Bounded: cleared when it grows past
# what a large fleet needs, so churning label values can't grow it forever.
_INTERN_LIMIT = 500_000
_interned_pairs: dict[tuple[str, str], tuple[str, str]] = {}
_interned_keys: dict[LabelKey, LabelKey] = {}
_bounds: dict[tuple[str, float], float] = {}


def _intern_key(key: LabelKey) -> LabelKey:
    found = _interned_keys.get(key)
    if found is not None:
        return found
    if len(_interned_keys) > _INTERN_LIMIT or len(_interned_pairs) > _INTERN_LIMIT:
        _interned_keys.clear()
        _interned_pairs.clear()
    key = tuple(_interned_pairs.setdefault(pair, pair) for pair in key)
    return _interned_keys.setdefault(key, key)


def _bound(le: str, scale: float) -> float:
    found = _bounds.get((le, scale))
    if found is None:
        if len(_bounds) > _INTERN_LIMIT:
            _bounds.clear()
        try:
            value = float(le)
        except ValueError:
            raise NormalizeError(f"histogram bucket le={le!r} is not a number — the target's page is malformed",
                                 "invalid_page") from None
        found = _bounds[(le, scale)] = value * scale
    return found


def _check_extra_labels(extra: Mapping[str, str], catalog: Catalog) -> None:
    reserved = set(BASE_LABELS) | {"le"} | set(catalog.gpu_labels)
    for sig in catalog.signals.values():
        reserved |= set(sig.labels)
    for name in extra:
        if not _LABEL_NAME.match(name):
            raise NormalizeError(f"extra label {name!r}: not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if name in reserved:
            raise NormalizeError(f"extra label {name!r}: reserved by the catalog — rename it (e.g. deploy_{name})")


def normalize(text: str, *, engine: str | None = None, model: str | None = None, replica: str = "",
              extra_labels: Mapping[str, str] | None = None, catalog: Catalog | None = None,
              parser: str = "fast") -> NormalizedPage:
    """Map a /metrics page to canonical series.

    engine: a catalog dialect id (vllm, sglang, tgi, trtllm, triton_trtllm, dcgm); detected when None.
    model: the model label; when None, the engine's own model label (or "unknown").
    replica, extra_labels: added to every series (e.g. team, cost_center from deploy.yaml).
    parser: "fast" (default; prometheus_client for pages it isn't sure of) or "prometheus_client" (always);
    both give the same NormalizedPage and the same errors.
    """
    cat = catalog or get_catalog()
    extra = dict(extra_labels or {})
    _check_extra_labels(extra, cat)
    page = parse_page(text, engine=engine, catalog=cat, parser=parser)
    if engine is None:
        dialect = detect_dialect(page, cat)
    elif engine in cat.dialects:
        dialect = engine
    else:
        raise NormalizeError(f"engine {engine!r}: unknown — use one of {', '.join(cat.dialects)}")
    engine_label = cat.dialects[dialect].engine
    base = {"replica": replica, **extra}
    if engine_label:
        base["engine"] = engine_label
    normalizer = _Normalizer(cat, dialect, page, base, model)

    families: dict[str, CanonicalFamily] = {}
    missing: list[str] = []
    unavailable: dict[str, str] = {}
    for signal in cat.signals.values():
        if dialect in signal.unavailable:
            unavailable[signal.name] = signal.unavailable[dialect]
        if dialect not in signal.sources:
            continue
        series = normalizer.build(signal)
        if series is None:
            missing.append(signal.name)
        elif series:
            families[signal.name] = CanonicalFamily(signal.name, signal.type, signal.help, series)
    return NormalizedPage(dialect=dialect, engine=engine_label, families=families, missing=missing,
                          unavailable=unavailable, problems=normalizer.problems)
