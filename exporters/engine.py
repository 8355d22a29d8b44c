"""Engine collector: scrape every target concurrently, normalize through the catalog, keep the last cycle.

Rules that keep the exported page truthful:
- A target whose scrape or parse fails exports none of its engine series that cycle (no stale values), and its
  `forge_engine_up` is 0 with `forge_exporter_scrape_error_info{reason=…}` saying why.
- One target's failure never touches another's series; an unexpected error is caught per target.
- Counters pass through as the engine reports them; a drop (engine restart) is counted in
  `forge_exporter_counter_resets_total`, and Prometheus' rate() treats it as the reset it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import platform
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from forge import __version__
from forge.catalog import get_catalog
from forge.exporters.config import ExporterSettings, Target
from forge.exporters.normalize import (CanonicalFamily, Histogram, LabelKey, NormalizedPage, NormalizeError,
                                       normalize, render_families)
from forge.exporters.scrape import ScrapeFailure, fetch_page, new_session

log = logging.getLogger("forge.exporter")


@dataclass
class TargetState:
    target: Target
    up: bool | None = None              # None until the first scrape finishes
    reason: str = ""
    detail: str = ""
    dialect: str | None = None
    engine: str | None = None           # engine label of the last good page
    model: str | None = None
    families: dict[str, CanonicalFamily] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    duration_seconds: float = 0.0
    page_bytes: int = 0
    samples: int = 0
    failures: Counter = field(default_factory=Counter)
    counter_resets: int = 0
    last_success_unix: float | None = None
    previous_totals: dict[tuple[str, LabelKey], float] = field(default_factory=dict)

    def series_count(self) -> int:
        return sum(len(f.series) for f in self.families.values())

    def identity(self) -> dict[str, str]:
        """Labels of this target's forge_engine_up: configured values first, then what the page said."""
        cat = get_catalog()
        configured = cat.dialects[self.target.engine].engine if self.target.engine in cat.dialects else None
        return {"engine": configured or self.engine or "unknown", "model": self.target.model or self.model or "unknown",
                "replica": self.target.name, **self.target.labels}


def _count_samples(text: str) -> int:
    """Samples on a text page: every non-empty line that isn't a comment."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _totals(families: dict[str, CanonicalFamily]) -> dict[tuple[str, LabelKey], float]:
    """Monotonic values per series (counter values, histogram counts), to notice an engine restart."""
    out: dict[tuple[str, LabelKey], float] = {}
    for family in families.values():
        if family.type == "counter":
            out.update(((family.name, k), v) for k, v in family.series.items())
        elif family.type == "histogram":
            out.update(((family.name, k), v.count) for k, v in family.series.items() if isinstance(v, Histogram))
    return out


class EngineCollector:
    """Owns the targets' states; `collect_once()` runs one bounded cycle over all of them."""

    def __init__(self, settings: ExporterSettings):
        self.settings = settings
        self.states = {t.name: TargetState(t) for t in settings.targets}
        self.cycles = 0
        self.last_cycle_seconds: float | None = None
        self._page_text = ""           # rendered engine series of the last cycle (cached: rendering is O(series))
        self._session: aiohttp.ClientSession | None = None
        # Parsing is CPU work: one worker thread keeps it off the event loop that serves /metrics.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-normalize")
        self._limit = asyncio.Semaphore(settings.max_concurrency)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------- a cycle

    async def collect_once(self) -> None:
        started = time.perf_counter()
        if self._session is None:
            self._session = new_session(self.settings.max_concurrency)
        await asyncio.gather(*(self._scrape(state) for state in self.states.values()))
        loop = asyncio.get_running_loop()
        self._page_text = await loop.run_in_executor(self._executor, self._render_targets)
        self.cycles += 1
        self.last_cycle_seconds = time.perf_counter() - started

    async def _scrape(self, state: TargetState) -> None:
        target = state.target
        started = time.perf_counter()
        try:
            # The slot is held until the page is parsed: at most max_concurrency raw pages wait in memory for
            # the (single) parsing thread, instead of every target's page at once.
            async with self._limit:
                fetched = await fetch_page(self._session, target.url, timeout_seconds=self.settings.timeout_seconds,
                                           max_bytes=self.settings.max_page_bytes)
                text, page_bytes = fetched.text, fetched.bytes_read
                del fetched
                loop = asyncio.get_running_loop()
                page, samples = await loop.run_in_executor(self._executor, self._normalize, target, text)
                del text  # the raw page is not kept once parsed
            self._check_engine(target, page)
        except ScrapeFailure as failure:
            self._mark_down(state, failure.reason, failure.detail, started)
        except NormalizeError as exc:
            self._mark_down(state, exc.reason, f"{target.url}: {exc.messages[0]}", started)
        except Exception as exc:  # noqa: BLE001 — one target's surprise must not stop the others
            log.exception("scraping %s failed unexpectedly", target.url)
            self._mark_down(state, "internal_error", f"{target.url}: {type(exc).__name__}: {exc}", started)
        else:
            self._mark_up(state, page, samples, page_bytes, started)

    @staticmethod
    def _normalize(target: Target, text: str) -> tuple[NormalizedPage, int]:
        if target.kind == "dcgm":
            # GPU series keep dcgm-exporter's own labels; replica/team belong to engine series.
            return normalize(text, engine="dcgm"), _count_samples(text)
        return normalize(text, model=target.model, replica=target.name, extra_labels=target.labels), \
            _count_samples(text)

    @staticmethod
    def _check_engine(target: Target, page: NormalizedPage) -> None:
        """A target that turns out to be another engine (or a GPU exporter) is not silently relabelled."""
        if target.kind == "dcgm":
            return
        if page.engine is None:
            raise ScrapeFailure("engine_mismatch", f"{target.url}: the page is {page.dialect}'s, not an engine's — "
                                f"list it under gpu: (mode dcgm-exporter)")
        if target.engine and target.engine not in (page.dialect, page.engine):
            raise ScrapeFailure("engine_mismatch", f"{target.url}: configured as {target.engine}, but the page "
                                f"is {page.dialect}'s — fix targets[].engine or the URL")

    def _mark_down(self, state: TargetState, reason: str, detail: str, started: float) -> None:
        if state.up is not False or state.reason != reason:
            log.warning("target %s down: %s", state.target.name, detail)
        state.up, state.reason, state.detail = False, reason, detail
        state.failures[reason] += 1
        state.families, state.problems = {}, []   # never re-export a failed target's old values
        state.duration_seconds = time.perf_counter() - started

    def _mark_up(self, state: TargetState, page: NormalizedPage, samples: int, page_bytes: int,
                 started: float) -> None:
        if state.up is False:
            log.info("target %s up again", state.target.name)
        totals = _totals(page.families)
        if any(value < state.previous_totals[key] for key, value in totals.items() if key in state.previous_totals):
            state.counter_resets += 1
            log.info("target %s: counters went down (engine restart); passed through as a reset", state.target.name)
        state.previous_totals = totals
        state.up, state.reason, state.detail = True, "", ""
        state.dialect, state.engine = page.dialect, page.engine
        models = sorted({dict(k).get("model", "") for f in page.families.values() for k in f.series} - {""})
        state.model = models[0] if models else None
        state.families, state.missing, state.problems = page.families, page.missing, page.problems
        state.samples, state.page_bytes = samples, page_bytes
        state.last_success_unix = time.time()
        state.duration_seconds = time.perf_counter() - started

    def _render_targets(self) -> str:
        merged: dict[str, CanonicalFamily] = {}
        for state in self.states.values():
            for name, family in state.families.items():
                into = merged.setdefault(name, CanonicalFamily(name, family.type, family.help))
                for key, value in family.series.items():
                    if key in into.series:
                        # Distinct replicas can't collide; two dcgm-exporters on one host can. Keep the first.
                        state.problems.append(f"{name}: series {dict(key)} also comes from another target; dropped")
                        continue
                    into.series[key] = value
        return render_families(merged.values()) if merged else ""

    # ------------------------------------------------------------------------------------------- output

    def engine_text(self) -> str:
        return self._page_text

    def self_families(self) -> list[CanonicalFamily]:
        """The exporter's view of its own work: per target up, reason, duration, failures, samples, resets."""
        def fam(name: str, kind: str, help_text: str) -> CanonicalFamily:
            return CanonicalFamily(name, kind, help_text)

        up = fam("forge_engine_up", "gauge", get_catalog().signals["forge_engine_up"].help)
        error = fam("forge_exporter_scrape_error_info", "gauge",
                    "1 while the target's last scrape failed; `reason` says why (see /targets for the detail).")
        duration = fam("forge_exporter_scrape_duration_seconds", "gauge", "Duration of the target's last scrape.")
        failures = fam("forge_exporter_scrape_failures_total", "counter",
                       "Failed scrapes by reason (invalid_page counts parse errors).")
        samples = fam("forge_exporter_scrape_samples", "gauge", "Samples on the target's last good page.")
        page_bytes = fam("forge_exporter_scrape_page_bytes", "gauge", "Size of the target's last good page.")
        series = fam("forge_exporter_series", "gauge", "Canonical series exported for the target this cycle.")
        problems = fam("forge_exporter_normalize_problems", "gauge",
                       "Series of the target's last page that were skipped as inconsistent.")
        resets = fam("forge_exporter_counter_resets_total", "counter",
                     "Times the target's counters went down between scrapes (engine restarts).")
        last_ok = fam("forge_exporter_last_success_timestamp_seconds", "gauge",
                      "Unix time of the target's last good scrape.")
        for state in self.states.values():
            if state.up is None:
                continue  # not scraped yet: nothing is known, so nothing is said
            key = (("target", state.target.name),)
            if state.target.kind == "engine":
                up.series[tuple(sorted(state.identity().items()))] = 1.0 if state.up else 0.0
            if not state.up:
                error.series[tuple(sorted((*key, ("reason", state.reason))))] = 1.0
            duration.series[key] = state.duration_seconds
            for reason, n in state.failures.items():
                failures.series[tuple(sorted((*key, ("reason", reason))))] = float(n)
            series.series[key] = float(state.series_count())
            problems.series[key] = float(len(state.problems))
            resets.series[key] = float(state.counter_resets)
            if state.up:
                samples.series[key] = float(state.samples)
                page_bytes.series[key] = float(state.page_bytes)
            if state.last_success_unix is not None:
                last_ok.series[key] = state.last_success_unix
        info = fam("forge_exporter_build_info", "gauge", "Forge exporter build; the value is always 1.")
        info.series[(("python_version", platform.python_version()), ("version", __version__))] = 1.0
        out = [up, error, duration, failures, samples, page_bytes, series, problems, resets, last_ok, info]
        if self.last_cycle_seconds is not None:
            cycle = fam("forge_exporter_cycle_duration_seconds", "gauge", "Duration of the last scrape cycle.")
            cycle.series[()] = self.last_cycle_seconds
            cycles = fam("forge_exporter_cycles_total", "counter", "Scrape cycles completed.")
            cycles.series[()] = float(self.cycles)
            out += [cycle, cycles]
        return [f for f in out if f.series]

    def targets_report(self) -> list[dict]:
        """The /targets JSON: what a person needs to see why a target is down."""
        return [{"target": s.target.name, "url": s.target.url, "kind": s.target.kind,
                 "up": s.up, "reason": s.reason or None, "detail": s.detail or None,
                 "dialect": s.dialect, "series": s.series_count(), "samples": s.samples,
                 "missing": s.missing, "problems": s.problems[:20],
                 "scrape_duration_seconds": round(s.duration_seconds, 6),
                 "failures": dict(s.failures), "counter_resets": s.counter_resets}
                for s in self.states.values()]
