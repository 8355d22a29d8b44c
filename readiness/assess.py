"""Run every registered check against one deploy.yaml and grade it: deploy.yaml → model → checks → report."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from forge import __version__
from forge.errors import InputError
from forge.loader import LoadedDeployment, load
from forge.readiness.registry import Check, Outcome, all_checks
from forge.readiness.result import DIMENSIONS, Assessment, Finding, evidence_summary
from forge.readiness.scoring import score_dimension, verdict
from forge.schema import Deployment

_SECRET_KEY = re.compile(r"(^|_)(secret|password|passwd|api_?key|apikey|credentials?|private_key|auth_token|access_token|bearer)($|_)", re.I)
_SECRET_VALUE = re.compile(
    r"(sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{20,}|xox[abp]-[A-Za-z0-9-]{10,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|Bearer\s+[A-Za-z0-9._~+/-]{16,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.)"
)
REDACTED = "***redacted***"


def looks_secret(key: str, value: Any) -> bool:
    return isinstance(value, str) and bool(_SECRET_KEY.search(key) or _SECRET_VALUE.search(value))


def redact(value: Any, key: str = "") -> Any:
    """Secrets never reach a report or a log: mask secret-named keys and secret-shaped strings."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if looks_secret(key, value):
        return REDACTED
    return value


@dataclass
class CheckContext:
    """What a check may look at: the validated deployment, the capacity model and the assessment date."""

    loaded: LoadedDeployment
    as_of: dt.date
    _capacity_error: str | None = field(default=None, init=False)

    @property
    def d(self) -> Deployment:
        return self.loaded.deployment

    @property
    def base_dir(self) -> Path:
        return self.loaded.path.parent

    @cached_property
    def capacity(self) -> Any | None:
        """The capacity & cost model's estimate, or None (with `capacity_error` set) when it can't be computed."""
        from forge.readiness.capacity import estimate

        try:
            return estimate(self.d, self.base_dir)
        except InputError as exc:
            self._capacity_error = "; ".join(exc.messages)
            return None

    @property
    def capacity_error(self) -> str | None:
        _ = self.capacity
        return self._capacity_error

    @cached_property
    def load_evidence(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Evidence records of evidence.load_results (paths relative to the deploy file), and the one-line errors
        of the files that can't be read."""
        names = self.d.evidence.load_results if self.d.evidence else []
        if not names:
            return [], []
        from forge.load.evidence import load_evidence

        records, errors = [], []
        for name in names:
            try:
                records.append(load_evidence(self.base_dir / name, slo=self.d.slo))
            except InputError as exc:
                errors.extend(exc.messages)
        return records, errors

    @cached_property
    def chaos_evidence(self) -> Any:
        """Game-day journals of evidence.chaos_journals (paths relative to the deploy file) as a (records, errors)
        pair — forge.readiness.evidence_chaos.ChaosEvidence, with latest(kind) and of_kind(kind)."""
        from forge.readiness.evidence_chaos import ChaosEvidence, read_chaos_evidence

        names = self.d.evidence.chaos_journals if self.d.evidence else []
        return read_chaos_evidence(names, self.base_dir) if names else ChaosEvidence([], [])

    @cached_property
    def prometheus_evidence(self) -> dict[str, Any] | None:
        """Live evidence read from evidence.prometheus_url (or --prometheus) — forge.readiness.evidence_prometheus;
        None without a URL. A URL that is not a reachable Prometheus is bad input (InputError, one line)."""
        url = self.d.evidence.prometheus_url if self.d.evidence else None
        if not url:
            return None
        from forge.readiness.evidence_prometheus import collect, origin

        return collect(url, self.d, where=origin(self.loaded, url))

    def days_since(self, day: dt.date) -> int:
        return (self.as_of - day).days


def _finding(check: Check, outcome: Outcome, loaded: LoadedDeployment) -> Finding:
    path = outcome.path if outcome.path is not None else check.path
    line, column = loaded.lines.locate(path)
    return Finding(
        check=check.id, dimension=check.dimension, severity=check.severity, status=outcome.status,
        title=check.title, message=redact(outcome.message) if looks_secret("", outcome.message) else outcome.message,
        evidence=redact(outcome.evidence), remediation=check.remediation, path=path, line=line, column=column,
        basis=outcome.basis, rationale=check.rationale,
    )


def apply_waivers(findings: list[Finding], deployment: Deployment, as_of: dt.date) -> None:
    """An unexpired waiver with a reason turns an open finding into `waived` (expired ones are OPS findings)."""
    active = {w.check: w for w in deployment.waivers if w.expires >= as_of}
    for f in findings:
        w = active.get(f.check)
        if w is not None and f.status in ("fail", "warn"):
            f.status = "waived"
            f.waiver = {"reason": w.reason, "expires": w.expires.isoformat()}


def assess_loaded(loaded: LoadedDeployment, as_of: dt.date | None = None) -> Assessment:
    from forge.readiness.capacity import deployment_calibration

    deployment_calibration(loaded.deployment, loaded.path.parent)  # a bad hardware.calibration file is bad input (exit 2)
    ctx = CheckContext(loaded, as_of or dt.date.today())
    findings: list[Finding] = []
    for check in all_checks().values():
        outcome = check.func(ctx)
        if outcome is None:
            outcome = Outcome("pass", "ok")
        findings.append(_finding(check, outcome, loaded))
    apply_waivers(findings, loaded.deployment, ctx.as_of)
    dimensions = [score_dimension(dim, findings) for dim in DIMENSIONS]
    result, total, reasons = verdict(dimensions, findings)
    capacity = ctx.capacity
    return Assessment(
        forge_version=__version__, file=str(loaded.path), deployment=loaded.deployment.metadata.name,
        verdict=result, score=total, dimensions=dimensions, findings=findings, as_of=ctx.as_of.isoformat(),
        verdict_reasons=reasons, capacity=capacity.to_dict() if capacity is not None else {},
        # The measurements the checks graded, for the reports' charts (cached: read once by the checks above).
        evidence=evidence_summary(ctx.load_evidence[0], ctx.d.slo, ctx.chaos_evidence),
    )


# Evidence named on the command line, by evidence: field (load_results, chaos_journals, ...): files, or one value
# for a scalar field. A plain mapping of tuples, so it pickles to the fleet's worker processes.
ExtraEvidence = dict[str, tuple[Any, ...]]


def with_evidence(loaded: LoadedDeployment, extra: ExtraEvidence | None) -> LoadedDeployment:
    """Add evidence named on the command line to the file's own `evidence:`: list fields are extended (files made
    absolute, so they need not be relative to the deploy file), a scalar field is set to the last value given."""
    if not extra or not any(extra.values()):
        return loaded
    from forge.schema import Evidence

    evidence = loaded.deployment.evidence or Evidence()
    update: dict[str, Any] = {}
    for key, values in extra.items():
        if not values:
            continue
        values = [str(v.resolve()) if isinstance(v, Path) else v for v in values]
        current = getattr(evidence, key)
        update[key] = current + values if isinstance(current, list) else values[-1]
    loaded.deployment = loaded.deployment.model_copy(update={"evidence": evidence.model_copy(update=update)})
    return loaded


def assess_file(path: str | Path, as_of: dt.date | None = None, evidence: ExtraEvidence | None = None) -> Assessment:
    return assess_loaded(with_evidence(load(path), evidence), as_of)


def _assess_or_errors(path: Path, as_of: dt.date | None,
                      evidence: ExtraEvidence | None = None) -> Assessment | list[str]:
    try:
        return assess_file(path, as_of, evidence)
    except InputError as exc:
        return exc.messages


# Below this many files a process pool costs more to start than it saves.
PARALLEL_MIN_FILES = 16


def assess_many(paths: list[Path], as_of: dt.date | None = None, on_done=None,
                evidence: ExtraEvidence | None = None) -> list[Assessment | list[str]]:
    """Assess files in order; a fleet is spread over the CPU cores. Each result is an Assessment or the
    one-line errors of a bad file. `on_done()` is called once per finished file (progress display)."""
    import os

    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PARALLEL_MIN_FILES or workers < 2:
        results = []
        for p in paths:
            results.append(_assess_or_errors(p, as_of, evidence))
            if on_done:
                on_done()
        return results
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    # Import the checks and the capacity model before the pool forks, so that workers inherit them instead of
    # importing them again each.
    import forge.readiness.capacity  # noqa: F401
    all_checks()
    # Files go to workers in chunks: one round trip per chunk, not per file. Small enough chunks keep both cores
    # busy to the end and the progress bar moving.
    chunksize = max(1, min(32, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = []
        for result in pool.map(partial(_assess_or_errors, as_of=as_of, evidence=evidence), paths,
                               chunksize=chunksize):
            results.append(result)
            if on_done:
                on_done()
        return results
