"""Which catalog signals one target provides, which are missing, and which its engine can't provide.

`forge exporter check URL` prints this; readiness checks call `check_target` for the same answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from forge.catalog import get_catalog
from forge.exporters.normalize import NormalizeError, normalize
from forge.exporters.scrape import DEFAULT_MAX_PAGE_BYTES, DEFAULT_TIMEOUT_SECONDS, ScrapeFailure, fetch_page, new_session


@dataclass
class SignalStatus:
    signal: str
    status: str          # provided | missing | unavailable | superseded | not_mapped
    series: int = 0
    note: str = ""


@dataclass
class TargetCheck:
    url: str
    ok: bool
    reason: str = ""
    detail: str = ""
    dialect: str | None = None
    engine: str | None = None
    bytes_read: int = 0
    duration_seconds: float = 0.0
    signals: list[SignalStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def provided(self) -> list[str]:
        return [s.signal for s in self.signals if s.status == "provided"]

    def missing(self) -> list[str]:
        return [s.signal for s in self.signals if s.status == "missing"]

    def to_dict(self) -> dict:
        return {"url": self.url, "ok": self.ok, "reason": self.reason or None, "detail": self.detail or None,
                "dialect": self.dialect, "engine": self.engine, "bytes_read": self.bytes_read,
                "duration_seconds": round(self.duration_seconds, 6),
                "provided": self.provided(), "missing": self.missing(),
                "signals": [s.__dict__ for s in self.signals], "problems": self.problems}


async def check_target_async(url: str, *, engine: str | None = None, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                             max_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> TargetCheck:
    async with new_session(1) as session:
        try:
            fetched = await fetch_page(session, url, timeout_seconds=timeout_seconds, max_bytes=max_bytes)
        except ScrapeFailure as failure:
            return TargetCheck(url, ok=False, reason=failure.reason, detail=failure.detail)
    try:
        page = normalize(fetched.text, engine=engine)
    except NormalizeError as exc:
        return TargetCheck(url, ok=False, reason=exc.reason, detail=exc.messages[0], bytes_read=fetched.bytes_read,
                           duration_seconds=fetched.duration_seconds)
    cat = get_catalog()
    scope = "gpu" if page.engine is None else "engine"
    statuses = []
    for signal in cat.signals_in_scope(scope):
        if signal.name in page.families:
            statuses.append(SignalStatus(signal.name, "provided", len(page.families[signal.name].series)))
        elif signal.name in page.missing:
            sources = ", ".join(m.describe() for m in signal.sources.get(page.dialect, ()))
            statuses.append(SignalStatus(signal.name, "missing", note=f"expected {sources}"))
        elif signal.name in page.unavailable:
            statuses.append(SignalStatus(signal.name, "unavailable", note=page.unavailable[signal.name]))
        elif page.dialect in signal.sources:
            # Every source is an older name that this page replaced with a newer metric (normalize's `{}`).
            newer = sorted({str(s) for m in signal.sources[page.dialect] for s in m.only_if_absent})
            statuses.append(SignalStatus(signal.name, "superseded", note=f"this page has the newer {', '.join(newer)}"))
        else:
            statuses.append(SignalStatus(signal.name, "not_mapped", note=f"no {page.dialect} source in the catalog"))
    return TargetCheck(url, ok=True, dialect=page.dialect, engine=page.engine, bytes_read=fetched.bytes_read,
                       duration_seconds=fetched.duration_seconds, signals=statuses, problems=page.problems)


def check_target(url: str, **options) -> TargetCheck:
    """Synchronous form for the CLI and readiness checks (starts its own event loop)."""
    return asyncio.run(check_target_async(url, **options))
