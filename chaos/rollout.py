"""Progressive canary rollout at the HAProxy gateway, judged by Prometheus, rolled back automatically on failure.

    controller = RolloutController(prometheus_url, haproxy_socket, canary="s1", stable="s0")
    result = controller.run()        # 10 % -> 50 % -> 100 % of the weight, analysed at every step
    result.promoted, result.rollback_seconds, result.steps

At each step the canary gets `step` % of the backend's weight and the stable replica the rest (HAProxy runtime
API), and every `interval_seconds` the controller compares the canary with the stable replica over the last
`window_seconds` in Prometheus: error ratio, TTFT p95 and ITL p95, per replica. Any check failing
`failure_limit` analyses in a row rolls back at once: stable weight back to full, canary 0, confirmed by reading
HAProxy back. A step passes when its pause is over and the latest analysis passes; an analysis with too few
canary requests is *inconclusive*, never a pass, and a step still inconclusive `inconclusive_limit_seconds`
after its pause rolls back too (no evidence is no promotion). Passing the last step promotes the canary.

Queries read the catalog's canonical signals (forge_ttft_seconds, forge_itl_seconds, forge_requests_total and
the derived forge:error_ratio, by the `replica` label the exporter sets) plus the gateway's own per-server
response codes (HAProxy's exporter): a request the engine's HTTP layer fails never reaches the engine's
counters, so only the gateway sees it. The window must hold a few scrapes: 20 s holds four at the stack's 5 s
scrape interval (engine -> exporter -> Prometheus adds up to two intervals of lag); detection measured 4.5-13 s.

The experiments' activities (`provider: {module: forge.chaos.rollout, func: ...}`) are at the end.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from forge.errors import InputError

# httpx, the catalog and forge.load are imported where used: `forge chaos` imports this module for its `rollout`
# command, and those three took ~1 s of every `forge chaos ...` start on the 2-core machine.
if TYPE_CHECKING:  # pragma: no cover
    from forge.chaos.runner import Lab

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
PROMOTED, ROLLED_BACK, ABORTED = "promoted", "rolled_back", "aborted"
DEFAULT_STEPS = (10, 50, 100)
BACKEND = "engines"
QUERY_TIMEOUT_S = 2.0
CONFIRM_TIMEOUT_S = 5.0
POLL_S = 0.1


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Thresholds:
    """When a canary fails. Latency fails on an absolute ceiling, or on being both `max_latency_ratio` times the
    stable replica's and `min_*_increase_seconds` worse: the floors keep CPU-contention noise on a shared host
    (measured on the 2-core lab machine: TTFT p95 38 ms vs 105 ms between two healthy replicas) from counting.
    `min_requests` 20: from 20 observations on, histogram_quantile's p95 no longer moves for the single worst
    request (rank 0.95 x 20 = 19), so one slow outlier cannot fail a canary."""

    max_error_ratio: float = 0.05
    max_error_ratio_increase: float = 0.02       # over the stable replica's
    max_ttft_p95_seconds: float = 2.0
    max_itl_p95_seconds: float = 0.2
    max_latency_ratio: float = 2.0
    min_ttft_increase_seconds: float = 0.1
    min_itl_increase_seconds: float = 0.02
    min_requests: int = 20                       # canary requests in the window, or the analysis is inconclusive
    min_token_gaps: int = 50                     # ITL observations in the window, likewise


@dataclass
class RolloutConfig:
    steps: tuple[int, ...] = DEFAULT_STEPS       # canary's share of the weight, percent, increasing
    pause_seconds: float = 15.0                  # at least this long at each step
    interval_seconds: float = 2.5                # between analyses
    window_seconds: float = 20.0                 # Prometheus range of each analysis
    failure_limit: int = 2                       # failing analyses in a row that roll back
    inconclusive_limit_seconds: float = 30.0     # after a step's pause, still no verdict: roll back
    full_weight: int = 100                       # HAProxy weight of 100 %
    backend: str = BACKEND
    thresholds: Thresholds = field(default_factory=Thresholds)

    def check(self) -> None:
        problems = []
        steps = list(self.steps)
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            problems.append(f"steps {steps}: give increasing percentages in 1-100, e.g. 10,50,100")
        if not 1 <= self.full_weight <= 256:
            problems.append(f"full_weight {self.full_weight}: HAProxy weights are 1-256")
        for name in ("pause_seconds", "interval_seconds", "window_seconds"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} {getattr(self, name)}: must be > 0")
        if self.failure_limit < 1:
            problems.append(f"failure_limit {self.failure_limit}: must be at least 1")
        if self.inconclusive_limit_seconds < 0:
            problems.append(f"inconclusive_limit_seconds {self.inconclusive_limit_seconds}: must be >= 0")
        if self.thresholds.min_requests < 1 or self.thresholds.min_token_gaps < 1:
            problems.append("min_requests and min_token_gaps must be at least 1 (no verdict on zero requests)")
        if problems:
            raise InputError([f"rollout: {p}" for p in problems])


# ------------------------------------------------------------------------------------------------ queries
def _with_matcher(expr: str, matcher: str) -> str:
    """Add a label matcher to every canonical range selector of a catalog expression (`forge_x{a="b"}[5m]`)."""
    def add(m: re.Match) -> str:
        labels = m.group(2)
        inner = f"{labels[1:-1]},{matcher}" if labels and labels[1:-1].strip() else matcher
        return f"{m.group(1)}{{{inner}}}"
    return re.sub(r"\b(forge_[a-z0-9_]+)(\{[^}]*\})?(?=\[)", add, expr)


def build_queries(canary: str, stable: str, window_seconds: float, backend: str = BACKEND) -> dict[str, str]:
    """PromQL per analysis input; each answers one value per replica (label `replica`, or `server` at the
    gateway — the stack names both the same: s0, s1, ...)."""
    from forge import catalog

    window = f"{max(1, round(window_seconds))}s"
    replicas = f'replica=~"{re.escape(canary)}|{re.escape(stable)}"'
    ttft, itl = catalog.resolve("ttft").name, catalog.resolve("itl").name
    requests = catalog.resolve("requests").name
    error_ratio = catalog.resolve("error_ratio")
    servers = f'proxy="{backend}",server=~"{re.escape(canary)}|{re.escape(stable)}"'
    return {
        "engine_error_ratio": _with_matcher(error_ratio.expr(window, "replica"), replicas),
        "engine_requests": f"sum by (replica) (increase({requests}{{{replicas}}}[{window}]))",
        "gateway_5xx": f'sum by (server) (increase(haproxy_server_http_responses_total{{{servers},code="5xx"}}[{window}]))',
        "gateway_responses": f"sum by (server) (increase(haproxy_server_http_responses_total{{{servers}}}[{window}]))",
        "ttft_p95": f"histogram_quantile(0.95, sum by (replica, le) (rate({ttft}_bucket{{{replicas}}}[{window}])))",
        "ttft_count": f"sum by (replica) (increase({ttft}_count{{{replicas}}}[{window}]))",
        "itl_p95": f"histogram_quantile(0.95, sum by (replica, le) (rate({itl}_bucket{{{replicas}}}[{window}])))",
        "itl_count": f"sum by (replica) (increase({itl}_count{{{replicas}}}[{window}]))",
    }


def values_by_replica(answer: dict[str, Any]) -> dict[str, float | None]:
    """One Prometheus /api/v1/query answer (vector) -> {replica or server: value}; NaN (0/0) becomes None."""
    if answer.get("status") != "success":
        raise ValueError(f"prometheus: {answer.get('errorType', 'error')}: {answer.get('error', answer)}")
    values: dict[str, float | None] = {}
    for sample in answer["data"]["result"]:
        name = sample["metric"].get("replica") or sample["metric"].get("server")
        value = float(sample["value"][1])
        values[name] = None if math.isnan(value) or math.isinf(value) else value
    return values


@dataclass
class ReplicaFigures:
    """What one analysis knows about one replica over the window."""

    requests: float = 0.0              # finished requests, the larger of the engine's and the gateway's count
    error_ratio: float | None = None   # the worse of the engine's and the gateway's (5xx) ratio
    ttft_p95_seconds: float | None = None
    ttft_count: float = 0.0
    itl_p95_seconds: float | None = None
    itl_count: float = 0.0


def figures(answers: dict[str, dict[str, Any]], replica: str) -> ReplicaFigures:
    v = {name: values_by_replica(answer).get(replica) for name, answer in answers.items()}
    gateway_responses, gateway_5xx = v.get("gateway_responses") or 0.0, v.get("gateway_5xx") or 0.0
    ratios = [r for r in (v.get("engine_error_ratio"), gateway_5xx / gateway_responses if gateway_responses else None)
              if r is not None]
    return ReplicaFigures(requests=max(v.get("engine_requests") or 0.0, gateway_responses),
                          error_ratio=max(ratios) if ratios else None,
                          ttft_p95_seconds=v.get("ttft_p95"), ttft_count=v.get("ttft_count") or 0.0,
                          itl_p95_seconds=v.get("itl_p95"), itl_count=v.get("itl_count") or 0.0)


# ------------------------------------------------------------------------------------------------ analysis
@dataclass
class Check:
    name: str
    verdict: str
    canary: float | None
    stable: float | None
    reason: str


@dataclass
class Analysis:
    verdict: str
    checks: list[Check]
    canary: ReplicaFigures
    stable: ReplicaFigures
    baseline: str                    # "stable now", "stable at <earlier>", or "none" (absolute thresholds only)
    at: float = 0.0                  # monotonic time of the analysis

    def summary(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "baseline": self.baseline,
                "canary": {k: _round(x) for k, x in asdict(self.canary).items()},
                "stable": {k: _round(x) for k, x in asdict(self.stable).items()},
                "checks": [{**asdict(c), "canary": _round(c.canary), "stable": _round(c.stable)} for c in self.checks]}

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == FAIL]


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x


def _latency_check(name: str, canary: float | None, canary_count: float, minimum: float, stable: float | None,
                   ceiling: float, ratio: float, floor: float) -> Check:
    if canary is None or canary_count < minimum:
        return Check(name, INCONCLUSIVE, canary, stable, f"{canary_count:.0f} observations, need {minimum}")
    if canary > ceiling:
        return Check(name, FAIL, canary, stable, f"{canary:.3f} s > ceiling {ceiling:g} s")
    if stable is not None and canary > stable * ratio and canary - stable > floor:
        return Check(name, FAIL, canary, stable, f"{canary:.3f} s > {ratio:g} x stable {stable:.3f} s "
                                                 f"(and {canary - stable:.3f} s > {floor:g} s worse)")
    return Check(name, PASS, canary, stable, "within thresholds" + ("" if stable is not None else " (no baseline)"))


def judge(canary: ReplicaFigures, stable: ReplicaFigures, thresholds: Thresholds,
          baseline: ReplicaFigures | None = None, baseline_name: str = "none") -> Analysis:
    """Canary vs stable. `baseline` stands in for the stable replica when it has too few requests in the
    window (at 100 % it gets none): the last stable figures the controller saw with enough of them."""
    t = thresholds
    if stable.requests >= t.min_requests:
        base, base_name = stable, "stable now"
    else:
        base, base_name = (baseline, baseline_name) if baseline is not None else (None, "none")
    checks = []
    if canary.requests < t.min_requests or canary.error_ratio is None:
        checks.append(Check("error_ratio", INCONCLUSIVE, canary.error_ratio, base and base.error_ratio,
                            f"{canary.requests:.0f} canary requests in the window, need {t.min_requests}"))
    else:
        stable_ratio = base.error_ratio if base is not None else None
        if canary.error_ratio > t.max_error_ratio:
            checks.append(Check("error_ratio", FAIL, canary.error_ratio, stable_ratio,
                                f"{canary.error_ratio:.3f} > ceiling {t.max_error_ratio:g}"))
        elif stable_ratio is not None and canary.error_ratio - stable_ratio > t.max_error_ratio_increase:
            checks.append(Check("error_ratio", FAIL, canary.error_ratio, stable_ratio,
                                f"{canary.error_ratio:.3f} is more than {t.max_error_ratio_increase:g} above "
                                f"stable {stable_ratio:.3f}"))
        else:
            checks.append(Check("error_ratio", PASS, canary.error_ratio, stable_ratio, "within thresholds"))
    checks.append(_latency_check("ttft_p95", canary.ttft_p95_seconds, canary.ttft_count, t.min_requests,
                                 base.ttft_p95_seconds if base else None, t.max_ttft_p95_seconds,
                                 t.max_latency_ratio, t.min_ttft_increase_seconds))
    checks.append(_latency_check("itl_p95", canary.itl_p95_seconds, canary.itl_count, t.min_token_gaps,
                                 base.itl_p95_seconds if base else None, t.max_itl_p95_seconds,
                                 t.max_latency_ratio, t.min_itl_increase_seconds))
    verdicts = {c.verdict for c in checks}
    verdict = FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS
    return Analysis(verdict, checks, canary, stable, base_name)


def analyse_answers(answers: dict[str, dict[str, Any]], canary: str, stable: str, thresholds: Thresholds,
                    baseline: ReplicaFigures | None = None, baseline_name: str = "none") -> Analysis:
    """The analysis of one set of Prometheus answers (as `build_queries` names them)."""
    return judge(figures(answers, canary), figures(answers, stable), thresholds, baseline, baseline_name)


class Prometheus:
    def __init__(self, url: str, timeout_s: float = QUERY_TIMEOUT_S):
        import httpx

        from forge.load.runner import is_loopback_url

        self.url = url.rstrip("/")
        # A loopback Prometheus is never reached through a proxy from the environment.
        self.client = httpx.Client(timeout=timeout_s, trust_env=not is_loopback_url(self.url))

    def query(self, expr: str) -> dict[str, Any]:
        response = self.client.get(f"{self.url}/api/v1/query", params={"query": expr})
        if response.status_code >= 500 or response.status_code in (404, 405):
            response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------------ gateway
class Weights:
    """The canary's and the stable replica's HAProxy weights, through the stack's runtime-API helper."""

    def __init__(self, socket_path: str | Path, backend: str = BACKEND):
        from forge.reference_stack.stack import Gateway

        # Gateway needs only the admin socket of a stack state; the controller may run beside any HAProxy.
        self.gateway = Gateway(SimpleNamespace(haproxy_socket=Path(socket_path)), backend=backend)
        self.backend = backend

    def get(self, server: str) -> int:
        # `get weight` answers "<current> (initial <configured>)".
        return int(self.gateway.command(f"get weight {self.backend}/{server}").split()[0])

    def set(self, server: str, weight: int) -> None:
        self.gateway.set_weight(server, weight)


# ------------------------------------------------------------------------------------------------ controller
class _Stopped(Exception):
    """The rollout was asked to stop while an analysis was under way."""


@dataclass
class StepRecord:
    percent: int
    canary_weight: int
    stable_weight: int
    started_s: float                  # since the rollout started
    verdict: str = INCONCLUSIVE       # pass | fail | inconclusive | aborted
    ended_s: float | None = None
    analyses: list[dict[str, Any]] = field(default_factory=list)
    canary_share: float | None = None  # canary's share of the gateway's responses in the last window

    def as_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "canary_weight": self.canary_weight, "stable_weight": self.stable_weight,
                "started_s": round(self.started_s, 3), "ended_s": None if self.ended_s is None else round(self.ended_s, 3),
                "verdict": self.verdict, "canary_share": _round(self.canary_share),
                "analysis": self.analyses[-1] if self.analyses else None, "analyses": len(self.analyses),
                "failing": [a for a in self.analyses if a["verdict"] == FAIL][-3:]}


@dataclass
class RolloutResult:
    outcome: str                               # promoted | rolled_back | aborted
    promoted: bool
    reason: str
    steps: list[StepRecord]
    fault_injected_at: float | None            # monotonic times; None where it did not happen
    detected_at: float | None
    rolled_back_at: float | None
    started_at: float
    ended_at: float
    canary_weight_after: int | None
    stable_weight_after: int | None

    @property
    def detection_seconds(self) -> float | None:
        """From the fault's injection (the canary starting to fail) to the controller's failing verdict."""
        if self.detected_at is None or self.fault_injected_at is None:
            return None
        return round(self.detected_at - self.fault_injected_at, 3)

    @property
    def rollback_seconds(self) -> float | None:
        """From the fault's injection to canary weight 0 read back from HAProxy."""
        if self.rolled_back_at is None or self.fault_injected_at is None:
            return None
        return round(self.rolled_back_at - self.fault_injected_at, 3)

    @property
    def rollback_action_seconds(self) -> float | None:
        """From the controller's failing verdict to canary weight 0 read back (the rollback itself)."""
        if self.rolled_back_at is None or self.detected_at is None:
            return None
        return round(self.rolled_back_at - self.detected_at, 3)

    def measurements(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "promoted": self.promoted, "reason": self.reason,
                "rollback_seconds": self.rollback_seconds, "detection_seconds": self.detection_seconds,
                "rollback_action_seconds": self.rollback_action_seconds,
                "canary_weight_after": self.canary_weight_after, "stable_weight_after": self.stable_weight_after,
                "rollout_seconds": round(self.ended_at - self.started_at, 3),
                "steps": [s.as_dict() for s in self.steps]}


class RolloutController:
    """Shifts weight from `stable` to `canary` at one HAProxy backend in steps, analysing each, and rolls back
    on failure. `run()` blocks; `start()` runs it on a thread (`wait`, `stop`). Bounded: every step ends within
    pause + inconclusive limit + failure_limit x interval (plus query time)."""

    def __init__(self, prometheus_url: str, haproxy_socket: str | Path, canary: str, stable: str,
                 config: RolloutConfig | None = None, log: Callable[[str], None] = lambda message: None,
                 prometheus: Prometheus | None = None, weights: Weights | None = None):
        self.config = config or RolloutConfig()
        self.config.check()
        if canary == stable:
            raise InputError(f"rollout: canary and stable are both {canary!r} — name two servers of the backend")
        self.canary, self.stable, self.log = canary, stable, log
        self.prometheus = prometheus or Prometheus(prometheus_url)
        self.weights = weights or Weights(haproxy_socket, self.config.backend)
        self.queries = build_queries(canary, stable, self.config.window_seconds, self.config.backend)
        self.steps: list[StepRecord] = []
        self.fault_injected_at: float | None = None
        self.result: RolloutResult | None = None
        self.initial_weights: dict[str, int] = {}     # when run() started
        self.weights_before: dict[str, int] = {}      # before an experiment prepared the canary (restore target)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._baseline: ReplicaFigures | None = None
        self._baseline_name = "none"
        self._started: float | None = None

    # ---- the analysis
    def window_now(self, now: float) -> float:
        """The analysis window, never reaching back before the rollout started: what the canary did before (an
        earlier experiment, a previous version) is no evidence about this rollout."""
        if self._started is None:
            return self.config.window_seconds
        return max(1.0, min(self.config.window_seconds, math.floor(now - self._started)))

    def fetch(self, window_seconds: float | None = None) -> dict[str, dict[str, Any]]:
        queries = self.queries if window_seconds is None else build_queries(
            self.canary, self.stable, window_seconds, self.config.backend)
        answers = {}
        for name, expr in queries.items():
            if self._stop.is_set():  # a stop (the restore rollback, Ctrl-C) does not wait for a slow Prometheus
                raise _Stopped()
            answers[name] = self.prometheus.query(expr)
        return answers

    def analyse(self) -> Analysis:
        """One analysis now. A query error is an inconclusive analysis (never a pass), not a crash."""
        import httpx

        now = time.monotonic()
        try:
            answers = self.fetch(self.window_now(now))
            analysis = analyse_answers(answers, self.canary, self.stable, self.config.thresholds,
                                       self._baseline, self._baseline_name)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            empty = ReplicaFigures()
            analysis = Analysis(INCONCLUSIVE, [Check("prometheus", INCONCLUSIVE, None, None,
                                                     f"{type(exc).__name__}: {exc}")], empty, empty, "none")
            answers = {}
        analysis.at = time.monotonic()  # when the verdict is known: detection counts to here
        if analysis.stable.requests >= self.config.thresholds.min_requests:
            self._baseline = analysis.stable
            self._baseline_name = f"stable at {now - (self._started or now):.1f} s"
        if answers and self.steps:
            responses = values_by_replica(answers["gateway_responses"])
            total = sum(v or 0.0 for v in responses.values())
            self.steps[-1].canary_share = (responses.get(self.canary) or 0.0) / total if total else None
        return analysis

    # ---- weights
    def _set_split(self, percent: int) -> tuple[int, int]:
        canary = round(self.config.full_weight * percent / 100)
        stable = self.config.full_weight - canary
        # The side that grows goes first, so the backend never has zero weight in between (503s).
        order = [(self.canary, canary), (self.stable, stable)]
        if stable > self.weights.get(self.stable):
            order.reverse()
        for server, weight in order:
            self.weights.set(server, weight)
        return canary, stable

    def rollback(self) -> float:
        """Stable to full weight, canary to 0, and wait until HAProxy reads back canary 0; returns that time."""
        self.weights.set(self.stable, self.config.full_weight)
        self.weights.set(self.canary, 0)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while True:
            if self.weights.get(self.canary) == 0:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollback: HAProxy still reports a weight for {self.canary} after "
                                   f"{CONFIRM_TIMEOUT_S:g} s")
            self.weights.set(self.canary, 0)
            time.sleep(POLL_S)

    def mark_fault(self, at: float | None = None) -> None:
        """The experiment tells when the canary started to fail (rollback_seconds counts from here)."""
        self.fault_injected_at = time.monotonic() if at is None else at

    @property
    def current_percent(self) -> int:
        return self.steps[-1].percent if self.steps else 0

    # ---- the loop
    def run(self) -> RolloutResult:
        c = self.config
        self._started = started = time.monotonic()
        self.initial_weights = {s: self.weights.get(s) for s in (self.canary, self.stable)}
        self.log(f"rollout {self.canary} (canary) vs {self.stable}: steps {list(c.steps)} %, pause {c.pause_seconds:g} s, "
                 f"window {c.window_seconds:g} s, weights now {self.initial_weights}")
        detected_at = rolled_back_at = None
        outcome, reason = PROMOTED, f"every step passed ({', '.join(f'{s} %' for s in c.steps)})"
        try:
            for percent in c.steps:
                canary_weight, stable_weight = self._set_split(percent)
                step = StepRecord(percent, canary_weight, stable_weight, time.monotonic() - started)
                self.steps.append(step)
                self.log(f"step {percent} %: weights {self.canary}={canary_weight} {self.stable}={stable_weight}")
                verdict, why, at = self._run_step(step)
                step.verdict, step.ended_s = verdict, time.monotonic() - started
                self.log(f"step {percent} %: {verdict} ({why})")
                if verdict != PASS:
                    outcome, reason = (ABORTED, why) if verdict == ABORTED else (ROLLED_BACK, f"step {percent} %: {why}")
                    detected_at = at if verdict == FAIL else None
                    rolled_back_at = self.rollback()
                    self.log(f"rolled back: {self.canary} weight 0 confirmed"
                             + (f", {rolled_back_at - self.fault_injected_at:.1f} s after the fault"
                                if self.fault_injected_at else ""))
                    break
        except BaseException:
            # Whatever broke (a query, Ctrl-C): never leave the canary holding traffic.
            try:
                self.rollback()
            except Exception as exc:
                self.log(f"rollback after an error failed too: {type(exc).__name__}: {exc}")
            raise
        canary_after, stable_after = self.weights.get(self.canary), self.weights.get(self.stable)
        self.result = RolloutResult(outcome, outcome == PROMOTED, reason, self.steps, self.fault_injected_at,
                                    detected_at, rolled_back_at, started, time.monotonic(), canary_after, stable_after)
        return self.result

    def _run_step(self, step: StepRecord) -> tuple[str, str, float | None]:
        c = self.config
        pause_ends = time.monotonic() + c.pause_seconds
        give_up = pause_ends + c.inconclusive_limit_seconds
        failures = 0
        while True:
            if self._stop.is_set():
                return ABORTED, "stopped before the rollout finished", None
            try:
                analysis = self.analyse()
            except _Stopped:
                return ABORTED, "stopped before the rollout finished", None
            step.analyses.append({"at_s": round(analysis.at - self._started, 3), **analysis.summary()})
            if analysis.verdict == FAIL:
                failures += 1
                if failures >= c.failure_limit:
                    why = "; ".join(f"{x.name} {x.reason}" for x in analysis.failing())
                    return FAIL, why, analysis.at
            else:
                failures = 0
            now = time.monotonic()
            if now >= pause_ends and analysis.verdict == PASS:
                return PASS, "analysis passed: " + ", ".join(
                    f"{x.name} {x.canary:.4g}" for x in analysis.checks if x.canary is not None), None
            if now >= give_up and analysis.verdict == INCONCLUSIVE:
                why = "; ".join(f"{x.name} {x.reason}" for x in analysis.checks if x.verdict == INCONCLUSIVE)
                return INCONCLUSIVE, f"still inconclusive {c.inconclusive_limit_seconds:g} s after the pause: {why}", None
            if self._stop.wait(c.interval_seconds):
                return ABORTED, "stopped before the rollout finished", None

    # ---- on a thread
    def start(self) -> "RolloutController":
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # reported by wait(); the rollback in run() already ran
                self._error = exc
            finally:
                self._done.set()
        self._thread = threading.Thread(target=target, name="forge-rollout", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout_s: float | None = None) -> RolloutResult | None:
        """The result once the rollout ended (None if still running at the timeout); re-raises its error."""
        # An Event, not Thread.join: a join interrupted by Ctrl-C can leave the thread marked stopped while it runs
        # (seen here: the restore rollback's join then returned at once, before the result existed).
        if self._thread is not None and not self._done.wait(timeout_s):
            return None
        if self._error is not None:
            raise RuntimeError(f"rollout failed: {type(self._error).__name__}: {self._error}") from self._error
        return self.result

    def stop(self, timeout_s: float = 10.0) -> RolloutResult | None:
        """Stop a running rollout: it rolls back (aborted) and ends."""
        self._stop.set()
        if self._thread is not None:
            self._done.wait(timeout_s)
        return self.result

    def close(self) -> None:
        self.prometheus.close()


def parse_steps(text: str) -> tuple[int, ...]:
    """`10,50,100` -> (10, 50, 100); InputError naming the fix otherwise."""
    try:
        steps = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise InputError(f"--steps {text!r}: give comma-separated percentages, e.g. 10,50,100") from None
    RolloutConfig(steps=steps).check()
    return steps


# ================================================================================== experiment activities
# Each takes the runner's lab (the reference stack it started: gateway_url, prometheus_url, haproxy_socket,
# replica_N_url, replica_N_server in lab.variables()) and returns a JSON-able output for the journal.

def _lab_vars(lab: Lab) -> dict[str, Any]:
    variables = lab.variables()
    if "prometheus_url" not in variables or "haproxy_socket" not in variables:
        raise ValueError("the rollout activities need the reference-stack lab (HAProxy and Prometheus) — set "
                         "configuration.lab: stack and exporter: true")
    return variables


def _replica(lab: Lab, index: int) -> tuple[str, str]:
    """(HAProxy server name, URL) of a replica the lab started; refuses anything else."""
    from forge.load.runner import is_loopback_url

    variables = _lab_vars(lab)
    server, url = variables.get(f"replica_{index}_server"), variables.get(f"replica_{index}_url")
    if not server or not url:
        raise ValueError(f"replica {index}: the lab started no such replica (it has "
                         f"{sorted(k for k in variables if k.startswith('replica_'))})")
    if not is_loopback_url(url):
        raise ValueError(f"replica {index} at {url}: not loopback — faults touch only what the lab started")
    return str(server), str(url)


def _controller(lab: Lab) -> RolloutController:
    controller = getattr(lab, "rollout", None)
    if controller is None:
        raise RuntimeError("no rollout was started (run start_rollout first)")
    return controller


def start_rollout(lab: Lab, canary: int = 1, stable: int = 0, steps: list[int] | str = DEFAULT_STEPS,
                  pause_seconds: float = 15.0, interval_seconds: float = 2.5, window_seconds: float = 20.0,
                  failure_limit: int = 2, inconclusive_limit_seconds: float = 30.0,
                  thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the controller on its own thread (the method goes on while it steps); canary/stable are replica
    indexes of the lab."""
    variables = _lab_vars(lab)
    canary_server, _ = _replica(lab, canary)
    stable_server, _ = _replica(lab, stable)
    unknown = set(thresholds or {}) - set(Thresholds.__dataclass_fields__)
    if unknown:
        raise ValueError(f"thresholds {sorted(unknown)}: unknown — use {', '.join(Thresholds.__dataclass_fields__)}")
    config = RolloutConfig(steps=parse_steps(steps) if isinstance(steps, str) else tuple(int(s) for s in steps),
                           pause_seconds=pause_seconds, interval_seconds=interval_seconds,
                           window_seconds=window_seconds, failure_limit=failure_limit,
                           inconclusive_limit_seconds=inconclusive_limit_seconds,
                           thresholds=Thresholds(**(thresholds or {})))
    controller = RolloutController(variables["prometheus_url"], variables["haproxy_socket"], canary_server,
                                   stable_server, config, log=lambda m: lab.log(f"rollout: {m}"))
    # The rollout starts from a canary with no traffic; restore puts back whatever the lab had.
    controller.weights_before = {s: controller.weights.get(s) for s in (canary_server, stable_server)}
    if controller.weights_before[canary_server] != 0:
        controller.rollback()
        lab.log(f"rollout: {canary_server} had weight {controller.weights_before[canary_server]}; set to 0 first")
    lab.rollout = controller
    if hasattr(lab, "on_close"):
        lab.on_close(controller.stop)  # teardown stops it even if the restore rollback never ran
    controller.start()
    return {"canary": canary_server, "stable": stable_server, "steps": list(config.steps),
            "queries": controller.queries}


def inject_canary_fault(lab: Lab, mode: str, at_step: int = 10, delay_seconds: float = 0.0,
                        wait_seconds: float = 60.0, factor: float = 10.0, rate: float = 0.5) -> dict[str, Any]:
    """Once the rollout reaches `at_step` % (bounded wait), wait `delay_seconds` and make the canary bad through
    the simulator's fault API: `slow` (step times x `factor`) or `error_rate` (`rate` of requests answered 500).
    The injection time is when the canary starts to fail; rollback_seconds counts from it."""
    import httpx

    faults = {"slow": {"factor": factor}, "error_rate": {"rate": rate}}
    if mode not in faults:
        raise ValueError(f"canary fault {mode!r}: use slow or error_rate")
    fault = faults[mode]
    controller = _controller(lab)
    index = next((i for i in range(64) if _lab_vars(lab).get(f"replica_{i}_server") == controller.canary), None)
    if index is None:
        raise ValueError(f"canary {controller.canary}: not a replica the lab started")
    _, url = _replica(lab, index)
    deadline = time.monotonic() + wait_seconds
    while controller.current_percent < at_step:
        if controller.result is not None or time.monotonic() > deadline:
            raise TimeoutError(f"the rollout did not reach {at_step} % within {wait_seconds:g} s "
                               f"(at {controller.current_percent} %)")
        time.sleep(POLL_S)
    time.sleep(delay_seconds)
    if controller.result is not None:
        raise RuntimeError(f"the rollout already ended ({controller.result.outcome}) before the fault")
    answer = httpx.post(url + "/_forge/faults", json={"mode": mode, **fault}, timeout=5)
    answer.raise_for_status()
    controller.mark_fault()
    getattr(lab, "fault_injected_at", {})[controller.canary] = controller.fault_injected_at
    return {"canary": controller.canary, "url": url, "mode": mode, "fault": fault,
            "at_percent": controller.current_percent, "active": answer.json().get("active")}


def _record(lab: Lab, result: RolloutResult) -> dict[str, Any]:
    measurements = result.measurements()
    lab.journal.measurements.update(measurements)
    return measurements


def await_rollback(lab: Lab, timeout_seconds: float = 120.0, max_rollback_seconds: float = 60.0) -> dict[str, Any]:
    """Wait for the rollout to end; fails unless it rolled back with canary weight 0 read back from HAProxy
    within `max_rollback_seconds` of the fault."""
    result = _controller(lab).wait(timeout_seconds)
    if result is None:
        raise TimeoutError(f"the rollout did not end within {timeout_seconds:g} s")
    measurements = _record(lab, result)
    if result.outcome != ROLLED_BACK:
        raise AssertionError(f"expected a rollback, got {result.outcome}: {result.reason}")
    if result.canary_weight_after != 0:
        raise AssertionError(f"rolled back but HAProxy reads canary weight {result.canary_weight_after}")
    if result.rollback_seconds is None or result.rollback_seconds > max_rollback_seconds:
        raise AssertionError(f"rollback took {result.rollback_seconds} s from the fault, bound {max_rollback_seconds:g} s")
    return {k: measurements[k] for k in ("outcome", "reason", "rollback_seconds", "detection_seconds",
                                         "rollback_action_seconds", "canary_weight_after", "stable_weight_after")}


def await_promotion(lab: Lab, timeout_seconds: float = 120.0) -> dict[str, Any]:
    """Wait for the rollout to end; fails unless every step passed and HAProxy reads the canary at full weight."""
    controller = _controller(lab)
    result = controller.wait(timeout_seconds)
    if result is None:
        raise TimeoutError(f"the rollout did not end within {timeout_seconds:g} s")
    measurements = _record(lab, result)
    if not result.promoted:
        raise AssertionError(f"expected promotion, got {result.outcome}: {result.reason}")
    if result.canary_weight_after != controller.config.full_weight or result.stable_weight_after != 0:
        raise AssertionError(f"promoted but HAProxy reads canary {result.canary_weight_after}, "
                             f"stable {result.stable_weight_after}")
    return {k: measurements[k] for k in ("outcome", "reason", "rollout_seconds", "canary_weight_after",
                                         "stable_weight_after")}


def restore(lab: Lab) -> dict[str, Any]:
    """Rollback (always runs): stop the controller (it rolls back if mid-way), put the weights back as they were
    before the rollout, clear every fault on the lab's replicas, and journal the load's outcome counts."""
    import httpx

    done: dict[str, Any] = {}
    controller = getattr(lab, "rollout", None)
    problems = []
    if controller is not None:
        result = controller.stop()
        if result is not None:
            lab.journal.measurements.update(result.measurements())
        for server, weight in (controller.weights_before or controller.initial_weights).items():
            try:
                controller.weights.set(server, weight)
            except Exception as exc:
                problems.append(f"weight {server}: {type(exc).__name__}: {exc}")
        done["weights"] = {s: controller.weights.get(s) for s in (controller.canary, controller.stable)}
        controller.close()
    variables = _lab_vars(lab)
    cleared = []
    for i in range(64):
        url = variables.get(f"replica_{i}_url")
        if not url:
            continue
        try:
            httpx.post(url + "/_forge/faults", json={"mode": "none"}, timeout=5).raise_for_status()
            cleared.append(variables.get(f"replica_{i}_server", i))
        except httpx.ConnectError:
            pass  # the process is gone, and its faults with it
        except httpx.HTTPError as exc:
            problems.append(f"faults on replica {i}: {type(exc).__name__}: {exc}")
    done["faults_cleared"] = cleared
    if hasattr(lab, "stop_load"):
        load = lab.stop_load()
        lab.journal.measurements["load"] = load
        done["load"] = load
    lab.journal.measurements.setdefault("promoted", False)
    if problems:
        raise RuntimeError("; ".join(problems))
    return done


def catalog_series_present(lab: Lab, wait_seconds: float = 0.0) -> bool:
    """Probe: Prometheus has the catalog's TTFT series for every replica the lab started (the analysis can see
    them); waits up to `wait_seconds` for the first scrapes of a fresh stack."""
    from forge import catalog

    variables = _lab_vars(lab)
    servers = {str(variables[k]) for k in variables if re.fullmatch(r"replica_\d+_server", k)}
    prometheus = Prometheus(variables["prometheus_url"])
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            answer = prometheus.query(f"count by (replica) ({catalog.resolve('ttft').name}_count)")
            if servers and servers <= set(values_by_replica(answer)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
    finally:
        prometheus.close()


# ================================================================================== `forge chaos rollout`
# Mounted by chaos/cli.py: `app.command("rollout")(one_line_input_errors(rollout_command))`.
def rollout_command(
    prometheus: Annotated[str, typer.Option("--prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")],
    haproxy_socket: Annotated[Path, typer.Option("--haproxy-socket", help="HAProxy admin socket (runtime API, level admin)")],
    canary: Annotated[str, typer.Option("--canary", help="HAProxy server name of the canary (also its `replica` label)")],
    stable: Annotated[str, typer.Option("--stable", help="HAProxy server name of the stable replica")],
    steps: Annotated[str, typer.Option("--steps", help="canary's share of the weight per step, percent")] = "10,50,100",
    backend: Annotated[str, typer.Option("--backend", help="HAProxy backend of both servers")] = BACKEND,
    pause_seconds: Annotated[float, typer.Option("--pause-seconds", help="at least this long at each step")] = 15.0,
    interval_seconds: Annotated[float, typer.Option("--interval-seconds", help="between analyses")] = 2.5,
    window_seconds: Annotated[float, typer.Option("--window-seconds", help="Prometheus range of each analysis")] = 20.0,
    failure_limit: Annotated[int, typer.Option("--failure-limit", help="failing analyses in a row that roll back")] = 2,
    inconclusive_limit_seconds: Annotated[float, typer.Option("--inconclusive-limit-seconds", help="roll back when a "
                                                              "step still has no verdict this long after its pause")] = 30.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the result (steps, analyses, timings) here")] = None,
) -> None:
    """Roll a canary out at HAProxy in weight steps, judged by Prometheus; roll back on failure. Exit 0 promoted,
    1 rolled back, 2 bad input, 130 interrupted (rolled back)."""
    if not prometheus.startswith(("http://", "https://")):
        raise InputError(f"--prometheus {prometheus!r}: not an http(s) URL — e.g. http://127.0.0.1:9090")
    if not haproxy_socket.exists():
        raise InputError(f"--haproxy-socket {haproxy_socket}: no such socket — start the stack (forge stack up) or "
                         "fix the path")
    config = RolloutConfig(steps=parse_steps(steps), pause_seconds=pause_seconds, interval_seconds=interval_seconds,
                           window_seconds=window_seconds, failure_limit=failure_limit,
                           inconclusive_limit_seconds=inconclusive_limit_seconds, backend=backend)

    def say(message: str) -> None:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        sys.stdout.flush()

    controller = RolloutController(prometheus, haproxy_socket, canary, stable, config, log=say)
    for server in (canary, stable):
        try:
            controller.weights.get(server)
        except Exception as exc:  # StackError "No such server", a dead socket
            raise InputError(f"--canary/--stable {server}: HAProxy backend {backend!r} has no such server "
                             f"({str(exc).splitlines()[0]}) — `forge stack status` lists them") from None
    try:
        result = controller.run()
    except KeyboardInterrupt:
        sys.stderr.write(f"forge: error: interrupted: rolled back, {canary} weight 0\n")
        raise typer.Exit(130) from None
    finally:
        controller.close()
    say(f"{result.outcome}: {result.reason}; {canary} weight {result.canary_weight_after}, "
        f"{stable} weight {result.stable_weight_after}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.measurements(), indent=2) + "\n")
    raise typer.Exit(0 if result.promoted else 1)
