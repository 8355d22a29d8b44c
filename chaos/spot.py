"""Spot interruption: a cloud metadata endpoint that posts interruption notices, and the drain agent that acts on
them — HAProxy drain, wait for in-flight requests, then SIGTERM the engine with a shutdown budget that fits the notice.

Clouds warn before they reclaim spot capacity: AWS puts `spot/instance-action` in the instance metadata two minutes
before (IMDSv2: a session token from `PUT /latest/api/token` first), GCP turns `instance/preempted` to TRUE 30 s
before (header `Metadata-Flavor: Google` required). Sources: AWS EC2 User Guide, "Spot Instance interruption
notices"; Google Cloud docs, "Preemptible VM instances — preemption process".

    endpoint = MetadataEndpoint().start()                  # 127.0.0.1, any free port; endpoint.url
    endpoint.post_notice("aws", notice_seconds=120)        # or POST {url}/_forge/notice {"provider": "aws", ...}
    agent = DrainAgent(NoticeClient("aws", endpoint.url), target, safety_margin_s=5)
    report = agent.run(stop_event)                         # polls; on a notice drains, stops the engine, reports

Without an agent the engine is stopped when the notice runs out (vLLM's default --shutdown-timeout 0 cuts every
in-flight stream). With it: the replica is set to `drain` at HAProxy (no new requests, the ones it holds go on),
the agent waits until HAProxy's `scur` and the engine's running/waiting gauges are 0, then SIGTERMs the engine's
process group (by the pid the stack started) and gives it notice − drain so far − safety margin to exit
(`shutdown_timeout_for_notice`, whole seconds as vLLM takes them); SIGKILL comes SIGKILL_S before the margin begins,
so even an engine that ignores SIGTERM is gone with the whole margin left. The engine's own --shutdown-timeout
should fit that too: the lab starts engines with `shutdown_timeout_seconds: fit-notice` (notice − margin).

The activities at the end are what `chaos/experiments/spot-interruption.yaml` calls (runner lab: stack).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import math
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from forge.chaos.watchdog import progress_sample

if TYPE_CHECKING:  # pragma: no cover
    from forge.chaos.runner import Lab

# The clouds' notice lengths (sources in the module docstring); experiments shorten them through configuration.
NOTICE_SECONDS = {"aws": 120, "gcp": 30}
PROVIDERS = tuple(NOTICE_SECONDS)
AWS_TOKEN_PATH = "/latest/api/token"
AWS_TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"
AWS_TOKEN_MAX_TTL_S = 21600
AWS_ACTION_PATH = "/latest/meta-data/spot/instance-action"
GCP_PREEMPTED_PATH = "/computeMetadata/v1/instance/preempted"
GCP_FLAVOR_HEADER = "Metadata-Flavor"
CONTROL_PATH = "/_forge/notice"
DEFAULT_SAFETY_MARGIN_S = 5.0
MIN_SHUTDOWN_S = 1.0          # the drain wait leaves the engine at least this long to exit before the margin
LOST_OUTCOMES = ("lost_mid_stream", "connect_error", "timeout")
POLL_S = 0.05
SIGKILL_S = 0.5               # SIGKILL to the process group gone (a CI run's vLLM: 0.17 s)


def shutdown_timeout_for_notice(notice_seconds: float, drained_seconds: float, margin_seconds: float) -> int:
    """Whole seconds an engine may take to shut down after SIGTERM and still be gone `margin_seconds` before the
    notice runs out, `drained_seconds` into it (vLLM's --shutdown-timeout takes whole seconds; floor, never < 0).
    AWS, 120 s notice, 8 s of drain, 5 s margin: 107."""
    if notice_seconds < 0 or drained_seconds < 0 or margin_seconds < 0:
        raise ValueError("notice, drain and margin are durations: each must be >= 0")
    return max(0, math.floor(notice_seconds - drained_seconds - margin_seconds))


def _iso_utc(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")  # AWS's instance-action format: "2017-09-18T08:22:00Z"


# ------------------------------------------------------------------------------------------ metadata endpoint
class _MetadataState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, float] = {}       # IMDSv2 token -> expiry (monotonic)
        self.notice: dict[str, Any] | None = None
        self.requests: Counter = Counter()       # (method, path, status) -> count, for tests and the journal


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "forge-metadata"
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> _MetadataState:
        return self.server.state  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # quiet: the agent polls several times a second

    def _send(self, status: int, body: str | bytes = b"", content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        with self.state.lock:
            self.state.requests[(self.command, self.path.split("?")[0], status)] += 1

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        return json.loads(self.rfile.read(length))

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != AWS_TOKEN_PATH:
            return self._send(404, "Not Found")
        ttl = self.headers.get(AWS_TOKEN_TTL_HEADER)
        if ttl is None or not ttl.isdigit() or not 1 <= int(ttl) <= AWS_TOKEN_MAX_TTL_S:
            return self._send(400, "Bad Request")  # IMDS's answer to a missing or out-of-range TTL
        token = secrets.token_urlsafe(32)
        with self.state.lock:
            self.state.tokens[token] = time.monotonic() + int(ttl)
        self._send(200, token, headers={AWS_TOKEN_TTL_HEADER: ttl})

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == AWS_ACTION_PATH:
            token = self.headers.get(AWS_TOKEN_HEADER)
            with self.state.lock:
                valid = token is not None and self.state.tokens.get(token, 0) > time.monotonic()
                notice = self.state.notice
            if not valid:
                return self._send(401, "Unauthorized")  # IMDSv2 required: no or expired token
            if notice is None:
                return self._send(404, "Not Found")
            return self._send(200, json.dumps({"action": notice["action"], "time": notice["time"]}),
                              "application/json")
        if path == GCP_PREEMPTED_PATH:
            if self.headers.get(GCP_FLAVOR_HEADER) != "Google":
                return self._send(403, "Missing Metadata-Flavor:Google header.")
            with self.state.lock:
                preempted = self.state.notice is not None
            return self._send(200, "TRUE" if preempted else "FALSE", headers={GCP_FLAVOR_HEADER: "Google"})
        if path == CONTROL_PATH:
            with self.state.lock:
                return self._send(200, json.dumps({"notice": self.state.notice}), "application/json")
        self._send(404, "Not Found")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != CONTROL_PATH:
            return self._send(404, "Not Found")
        try:
            body = self._body()
            notice = self.server.endpoint.post_notice(body.get("provider", "aws"),  # type: ignore[attr-defined]
                                                      body.get("notice_seconds"), body.get("action", "terminate"))
        except (ValueError, TypeError) as exc:
            return self._send(400, json.dumps({"error": str(exc)}), "application/json")
        self._send(200, json.dumps({"notice": notice}), "application/json")

    def do_DELETE(self) -> None:  # noqa: N802
        if self.path != CONTROL_PATH:
            return self._send(404, "Not Found")
        self.server.endpoint.clear()  # type: ignore[attr-defined]
        self._send(200, json.dumps({"notice": None}), "application/json")


class MetadataEndpoint:
    """AWS IMDSv2's spot instance-action and GCP's preempted flag on 127.0.0.1, with a control to post a notice
    (`post_notice`, or POST/DELETE /_forge/notice). One notice at a time; both providers' paths show it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = _MetadataState()
        self._server = http.server.ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.state = self.state  # type: ignore[attr-defined]
        self._server.endpoint = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "MetadataEndpoint":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="forge-metadata", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def post_notice(self, provider: str = "aws", notice_seconds: float | None = None,
                    action: str = "terminate") -> dict[str, Any]:
        """Start an interruption notice now: the instance goes `notice_seconds` from now (default: the provider's
        own notice, 120 s AWS, 30 s GCP). action: terminate | stop | hibernate (AWS's instance-action values)."""
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: use {' or '.join(PROVIDERS)}")
        if action not in ("terminate", "stop", "hibernate"):
            raise ValueError(f"action {action!r}: use terminate, stop or hibernate")
        seconds = float(NOTICE_SECONDS[provider] if notice_seconds is None else notice_seconds)
        if not 0 < seconds <= 3600:
            raise ValueError(f"notice_seconds {seconds:g}: use 0 < seconds <= 3600")
        now = dt.datetime.now(dt.UTC)
        # AWS's time has whole seconds: round the moment up so the notice is never shorter than asked.
        ends = dt.datetime.fromtimestamp(math.ceil(now.timestamp() + seconds), dt.UTC)
        notice = {"provider": provider, "action": action, "notice_seconds": seconds, "posted": _iso_utc(now),
                  "time": _iso_utc(ends)}
        with self.state.lock:
            self.state.notice = notice
        return dict(notice)

    def clear(self) -> None:
        with self.state.lock:
            self.state.notice = None

    def __enter__(self) -> "MetadataEndpoint":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------ notice client
@dataclass(frozen=True)
class Notice:
    provider: str
    seen_at: float          # monotonic
    deadline: float         # monotonic: when the instance goes
    action: str
    raw: str

    @property
    def notice_seconds(self) -> float:
        """What was left of the notice when the agent saw it."""
        return self.deadline - self.seen_at


class NoticeClient:
    """Polls a metadata service the way each cloud's own agents do: AWS IMDSv2 (token, then instance-action;
    404 = no notice) or GCP (`preempted` with Metadata-Flavor: Google; TRUE = notice, its length is GCP's 30 s
    unless `notice_seconds` says otherwise, since GCP does not publish the time)."""

    def __init__(self, provider: str, metadata_url: str, notice_seconds: float | None = None,
                 timeout_s: float = 1.0):
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: use {' or '.join(PROVIDERS)}")
        self.provider, self.base = provider, metadata_url.rstrip("/")
        self.notice_seconds = float(NOTICE_SECONDS[provider] if notice_seconds is None else notice_seconds)
        # Never through an HTTP(S)_PROXY: a metadata service is link-local (or loopback in a game day).
        self._client = httpx.Client(timeout=timeout_s, trust_env=False)
        self._token: str | None = None
        self._token_expiry = 0.0

    def close(self) -> None:
        self._client.close()

    def _aws_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expiry - 60:
            ttl = 21600
            answer = self._client.put(self.base + AWS_TOKEN_PATH, headers={AWS_TOKEN_TTL_HEADER: str(ttl)})
            answer.raise_for_status()
            self._token, self._token_expiry = answer.text, time.monotonic() + ttl
        return self._token

    def poll(self) -> Notice | None:
        """One look at the metadata; a Notice when the instance is to be interrupted. Raises httpx errors."""
        now_mono, now_wall = time.monotonic(), time.time()
        if self.provider == "aws":
            answer = self._client.get(self.base + AWS_ACTION_PATH, headers={AWS_TOKEN_HEADER: self._aws_token()})
            if answer.status_code == 401:  # token expired or the service restarted: get a new one next time
                self._token = None
                answer.raise_for_status()
            if answer.status_code == 404:
                return None
            answer.raise_for_status()
            body = answer.json()
            when = dt.datetime.strptime(body["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
            return Notice("aws", now_mono, now_mono + max(0.0, when - now_wall), body.get("action", "terminate"),
                          answer.text)
        answer = self._client.get(self.base + GCP_PREEMPTED_PATH, headers={GCP_FLAVOR_HEADER: "Google"})
        answer.raise_for_status()
        if answer.text.strip() != "TRUE":
            return None
        return Notice("gcp", now_mono, now_mono + self.notice_seconds, "terminate", answer.text)


# ------------------------------------------------------------------------------------------ drain agent
@dataclass
class DrainTarget:
    """What the agent acts on: one engine behind one HAProxy server. `signal` reaches the engine's process group
    by the pid its starter recorded (and refuses a recycled pid); `wait_exit` waits until the group is gone."""

    server: str
    engine_url: str
    gateway: Any                                   # forge.reference_stack.stack.Gateway
    signal: Callable[[int], bool]
    wait_exit: Callable[[float], bool]
    engine_shutdown_timeout_s: int | None = None   # the engine's --shutdown-timeout as started (None: default 0)


def component_target(component: Any, server: str, gateway: Any, shutdown_timeout_s: int | None) -> DrainTarget:
    """A DrainTarget bound to one engine process the stack started (a forge.reference_stack.stack.Component):
    signals reach its process group only while the pid's start time still matches, so neither a recycled pid
    nor a later restart of the replica is ever hit."""

    def signal_engine(sig: int) -> bool:
        if not component.leader_alive():
            return False
        component.signal_group(sig)
        return True

    def wait_exit(timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while component.group_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    return DrainTarget(server=server, engine_url=component.url, gateway=gateway, signal=signal_engine,
                       wait_exit=wait_exit, engine_shutdown_timeout_s=shutdown_timeout_s)


@dataclass
class DrainReport:
    provider: str
    server: str
    notice_seconds: float                 # left of the notice when the agent saw it
    inflight_at_notice: int               # HAProxy scur of the server when the drain began
    drain_seconds: float = 0.0            # notice seen -> nothing in flight
    drained_clean: bool = True            # False: the drain wait hit its bound with requests still in flight
    shutdown_budget_seconds: int = 0      # notice - drain so far - margin, at SIGTERM (whole seconds)
    engine_shutdown_timeout_seconds: int | None = None   # the engine's own --shutdown-timeout, set at its start
    stop_seconds: float | None = None     # SIGTERM -> process group gone
    killed: bool = False                  # SIGKILL was needed (SIGKILL_S before the margin)
    seconds_left_at_exit: float | None = None   # notice deadline - engine gone (> margin when all went well)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class DrainAgent:
    """Polls the metadata service; on a notice drains the replica at HAProxy, waits for its in-flight requests,
    then stops the engine within what is left of the notice (see the module docstring)."""

    def __init__(self, client: NoticeClient, target: DrainTarget, *, poll_interval_s: float = 1.0,
                 safety_margin_s: float = DEFAULT_SAFETY_MARGIN_S, log: Callable[[str], None] = lambda m: None):
        if poll_interval_s <= 0:
            raise ValueError(f"poll interval {poll_interval_s:g} s: must be > 0")
        if safety_margin_s < 0:
            raise ValueError(f"safety margin {safety_margin_s:g} s: must be >= 0")
        self.client, self.target = client, target
        self.poll_interval_s, self.safety_margin_s, self.log = poll_interval_s, safety_margin_s, log
        self.report: DrainReport | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self.stop_event = threading.Event()
        self.poll_errors = 0
        self._thread: threading.Thread | None = None

    # ---- loop
    def run(self, stop: threading.Event | None = None, max_seconds: float | None = None) -> DrainReport | None:
        """Poll until a notice (then drain and return the report), `stop` is set or `max_seconds` pass (None)."""
        stop = stop or self.stop_event
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    notice = self.client.poll()
                except httpx.HTTPError as exc:
                    # A metadata hiccup must not kill the agent: the next poll may see the notice.
                    self.poll_errors += 1
                    if self.poll_errors in (1, 10, 100):
                        self.log(f"metadata poll failed ({self.poll_errors}x): {type(exc).__name__}: {exc}")
                    notice = None
                if notice is not None:
                    self.log(f"{notice.provider} interruption notice: {notice.action} in {notice.notice_seconds:.1f} s")
                    self.report = self.drain(notice)
                    return self.report
                stop.wait(self.poll_interval_s)
            return None
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.done.set()

    def start(self) -> "DrainAgent":
        def main() -> None:
            try:
                self.run()
            except Exception:
                pass  # kept in self.error; await_drained reports it

        self._thread = threading.Thread(target=main, name="forge-drain-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.client.close()

    # ---- the drain
    def inflight(self) -> int:
        """Requests still on the replica: HAProxy's current sessions on the server, and the engine's own running +
        waiting gauges (0 when the engine is unreachable)."""
        scur = sum(int(values.get("scur") or 0) for values in self.target.gateway.stat_rows()
                   if values["svname"] == self.target.server)
        engine = 0
        try:
            page = httpx.get(self.target.engine_url + "/metrics", timeout=1.0).text
            from forge.exporters.normalize import normalize

            families = normalize(page).families
            engine = int(sum(float(v) for name in ("forge_requests_running", "forge_requests_waiting")
                             if name in families for v in families[name].series.values()))
        except httpx.HTTPError:
            engine = 0
        return max(scur, engine)

    def drain(self, notice: Notice) -> DrainReport:
        t = self.target
        inflight = self.inflight()
        report = DrainReport(notice.provider, t.server, notice.notice_seconds, inflight,
                             engine_shutdown_timeout_seconds=t.engine_shutdown_timeout_s)
        t.gateway.drain(t.server)  # no new requests; those it holds go on
        self.log(f"drain {t.server} at HAProxy: {inflight} request(s) in flight")
        # Wait for in-flight requests, leaving the engine time to exit before the margin.
        wait_until = notice.deadline - self.safety_margin_s - MIN_SHUTDOWN_S
        while (inflight := self.inflight()) > 0:
            if time.monotonic() >= wait_until:
                report.drained_clean = False
                report.errors.append(f"{inflight} request(s) still in flight when the notice left no more time")
                break
            time.sleep(POLL_S)
        now = time.monotonic()
        report.drain_seconds = now - notice.seen_at
        report.shutdown_budget_seconds = shutdown_timeout_for_notice(
            notice.notice_seconds, report.drain_seconds, self.safety_margin_s)
        # vLLM reads --shutdown-timeout at start only; what the notice leaves now is enforced here, with SIGKILL.
        self.log(f"{t.server} drained in {report.drain_seconds:.2f} s; SIGTERM with a shutdown budget of "
                 f"{report.shutdown_budget_seconds} s (engine --shutdown-timeout {t.engine_shutdown_timeout_s or 0})")
        terminated = time.monotonic()
        if not t.signal(signal.SIGTERM):
            report.errors.append("the engine was already gone at SIGTERM")
        # The notice bounds the engine's exit whatever its own --shutdown-timeout says: the cloud will not wait.
        # SIGKILL early enough that the group is gone before the safety margin begins, not just after the
        # whole-second budget (one CI run's vLLM ignored SIGTERM; a kill at budget + 0.5 s left 4.7 s of a 5 s margin).
        kill_after = notice.deadline - self.safety_margin_s - SIGKILL_S - terminated
        if not t.wait_exit(max(0.0, kill_after)):
            report.killed = True
            t.signal(signal.SIGKILL)
            t.wait_exit(10)
        gone = time.monotonic()
        report.stop_seconds = gone - terminated
        report.seconds_left_at_exit = notice.deadline - gone
        self.log(f"{t.server} stopped {report.stop_seconds:.2f} s after SIGTERM, {report.seconds_left_at_exit:.1f} s "
                 f"before the notice ran out")
        return report


# ------------------------------------------------------------------------------------------ activities
# What `provider: {type: python, module: forge.chaos.spot, func: ...}` calls; each takes the runner's lab first.
def _spot(lab: Lab) -> dict[str, Any]:
    state = getattr(lab, "spot", None)
    if state is None:
        state = lab.spot = {"endpoint": None, "agents": {}, "notice_posted_at": None, "notice": None}
    return state


def _stack_replica(lab: Lab, replica: int):
    if lab.stack is None:
        raise RuntimeError("spot interruption needs the gateway: use configuration.lab: stack")
    if not 0 <= replica < len(lab.replicas):
        raise ValueError(f"replica {replica}: the lab has replicas 0-{len(lab.replicas) - 1}")
    return lab.replicas[replica]


def start_metadata_endpoint(lab: Lab) -> dict[str, Any]:
    """Start the metadata endpoint on 127.0.0.1 (stopped at teardown)."""
    spot = _spot(lab)
    if spot["endpoint"] is None:
        spot["endpoint"] = MetadataEndpoint().start()
        lab.on_close(spot["endpoint"].stop)
    return {"url": spot["endpoint"].url}


def post_interruption_notice(lab: Lab, provider: str = "aws", notice_seconds: float | None = None) -> dict[str, Any]:
    """The cloud's notice: from now on the metadata says the instance goes in notice_seconds."""
    spot = _spot(lab)
    if spot["endpoint"] is None:
        raise RuntimeError("no metadata endpoint: run start_metadata_endpoint first")
    notice = spot["endpoint"].post_notice(provider, notice_seconds)
    spot["notice_posted_at"], spot["notice"] = time.time(), notice
    lab.journal.measurements["provider"] = provider
    lab.journal.measurements["notice_seconds"] = notice["notice_seconds"]
    return notice


def clear_interruption_notices(lab: Lab) -> dict[str, Any]:
    """Rollback: the metadata shows no notice."""
    spot = _spot(lab)
    if spot["endpoint"] is not None:
        spot["endpoint"].clear()
    return {"cleared": spot["endpoint"] is not None}


def start_drain_agent(lab: Lab, replica: int, provider: str = "aws", poll_interval_seconds: float = 1.0,
                      safety_margin_seconds: float = DEFAULT_SAFETY_MARGIN_S,
                      notice_seconds: float | None = None) -> dict[str, Any]:
    """Run the drain agent for `replica` in the background, polling the lab's metadata endpoint."""
    target_replica = _stack_replica(lab, replica)
    spot = _spot(lab)
    if spot["endpoint"] is None:
        raise RuntimeError("no metadata endpoint: run start_metadata_endpoint first")
    target = component_target(target_replica.component, target_replica.server, lab.gateway,
                              lab.engine_shutdown_timeout.get(replica))
    agent = DrainAgent(NoticeClient(provider, spot["endpoint"].url, notice_seconds=notice_seconds), target,
                       poll_interval_s=poll_interval_seconds, safety_margin_s=safety_margin_seconds,
                       log=lambda m: lab.log(f"drain agent: {m}")).start()
    spot["agents"][replica] = agent
    lab.on_close(agent.stop)
    return {"replica": target_replica.name, "server": target.server, "pid": target_replica.pid,
            "provider": provider, "poll_interval_seconds": poll_interval_seconds,
            "safety_margin_seconds": safety_margin_seconds,
            "engine_shutdown_timeout_seconds": target.engine_shutdown_timeout_s}


def await_drained(lab: Lab, replica: int, timeout_seconds: float = 60) -> dict[str, Any]:
    """Wait for the agent's drain: the replica drained at HAProxy and its engine gone; records drain_seconds."""
    target_replica = _stack_replica(lab, replica)
    agent = _spot(lab)["agents"].get(replica)
    if agent is None:
        raise RuntimeError(f"no drain agent for replica {replica}: run start_drain_agent first")
    if not agent.done.wait(timeout_seconds):
        raise TimeoutError(f"{target_replica.name}: the drain agent did not finish within {timeout_seconds:g} s")
    if agent.error or agent.report is None:
        raise RuntimeError(f"{target_replica.name}: the drain agent failed: {agent.error or 'stopped before a notice'}")
    report = agent.report
    status = next(r["status"] for r in lab.server_stats() if r["name"] == target_replica.server)
    if target_replica.alive():
        raise RuntimeError(f"{target_replica.name}: engine pid {target_replica.pid} still running after the drain")
    m = lab.journal.measurements
    m["drain_seconds"] = round(report.drain_seconds, 3)
    m["in_flight_at_fault"] = report.inflight_at_notice
    m["drain"] = report.as_dict()
    return {**report.as_dict(), "haproxy_status": status}


def terminate_without_drain(lab: Lab, replica: int, at_notice_deadline: bool = True,
                            timeout_seconds: float = 30) -> dict[str, Any]:
    """The baseline: nobody acts on the notice; when it runs out the engine gets SIGTERM as the instance shuts
    down (with vLLM's default --shutdown-timeout 0 every in-flight stream is cut), SIGKILL if it lingers."""
    target_replica = _stack_replica(lab, replica)
    spot = _spot(lab)
    waited = 0.0
    if at_notice_deadline and spot["notice"] is not None:
        waited = max(0.0, spot["notice_posted_at"] + spot["notice"]["notice_seconds"] - time.time())
        time.sleep(waited)
    started = time.monotonic()
    if not target_replica.signal(signal.SIGTERM):
        raise RuntimeError(f"{target_replica.name}: engine pid {target_replica.pid} was not running")
    killed = False
    if not target_replica.wait_exit(timeout_seconds):
        killed = True
        target_replica.signal(signal.SIGKILL)
        target_replica.wait_exit(10)
    return {"replica": target_replica.name, "pid": target_replica.pid, "waited_for_notice_seconds": round(waited, 3),
            "stop_seconds": round(time.monotonic() - started, 3), "killed": killed,
            "engine_shutdown_timeout_seconds": lab.engine_shutdown_timeout.get(replica)}


def _lost(record: dict[str, Any]) -> bool:
    if record["outcome"] in LOST_OUTCOMES:
        return True
    return record["outcome"] == "http_error" and (record.get("status") is None or record["status"] >= 500)


def count_lost_requests(lab: Lab, measurement: str | None = None, settle_seconds: float = 1.0) -> dict[str, Any]:
    """Load requests lost since the last notice was posted: lost mid-stream, connection errors, timeouts and 5xx
    answers (a cancelled request at the load's end is not lost). `settle_seconds` first, so failures in flight
    are recorded. With `measurement`, the count goes into the journal's measurements under that name."""
    spot = _spot(lab)
    if spot["notice_posted_at"] is None:
        raise RuntimeError("no notice posted: nothing to count losses from")
    time.sleep(settle_seconds)
    since, until = spot["notice_posted_at"], time.time()
    window = [r for r in lab.load_records() if since <= r["finished_at"] <= until]
    lost = [r for r in window if _lost(r)]
    outcomes = dict(Counter(r["outcome"] for r in window))
    if measurement:
        lab.journal.measurements[measurement] = len(lost)
    return {"lost": len(lost), "requests": len(window), "outcomes": outcomes,
            "window_seconds": round(until - since, 3),
            "errors": sorted({(r.get("error") or "")[:120] for r in lost})[:5]}


def restart_replica(lab: Lab, replica: int, shutdown_timeout_seconds: int | None | str = "unchanged") -> dict[str, Any]:
    """Start the replica again (same port), ready at HAProxy and UP; optionally with another --shutdown-timeout
    (null: the engine's default 0, as an engine nobody configured for spot)."""
    target_replica = _stack_replica(lab, replica)
    if shutdown_timeout_seconds != "unchanged":
        shutdown_timeout_seconds = lab.resolve_shutdown_timeout(shutdown_timeout_seconds)
    seconds = target_replica.restart(shutdown_timeout_s=shutdown_timeout_seconds)
    return {"replica": target_replica.name, "pid": target_replica.pid, "restart_seconds": round(seconds, 3),
            "engine_shutdown_timeout_seconds": lab.engine_shutdown_timeout.get(replica)}


def restart_stopped_replicas(lab: Lab) -> dict[str, Any]:
    """Rollback: start every replica whose engine is gone, with the lab's configured shutdown timeout."""
    restarted = []
    configured = lab.config.get("shutdown_timeout_seconds")
    for r in lab.replicas:
        if not r.alive():
            r.restart(shutdown_timeout_s=lab.resolve_shutdown_timeout(configured))
            restarted.append(r.name)
    return {"restarted": restarted}


def set_servers_ready(lab: Lab) -> dict[str, Any]:
    """Rollback: every HAProxy server back to ready (undoes drain and maint)."""
    if lab.gateway is None:
        return {"ready": []}
    for r in lab.replicas:
        lab.gateway.ready(r.server)
    return {"ready": [r.server for r in lab.replicas]}


def all_servers_up(lab: Lab) -> bool:
    """Probe: HAProxy reports every replica's server UP."""
    rows = lab.server_stats()
    return len(rows) == len(lab.replicas) and all(r["status"] == "UP" for r in rows)


def load_outcomes_ok(lab: Lab, window_seconds: float = 2.0) -> bool:
    """Probe: over the next window_seconds, load requests complete through the gateway and none is lost."""
    since = time.time()
    time.sleep(window_seconds)
    window = [r for r in lab.load_records() if r["finished_at"] >= since]
    lost = sum(1 for r in window if _lost(r))
    completed = sum(1 for r in window if r["outcome"] == "ok")
    lab.log(f"load over {window_seconds:g} s: {completed} completed, {lost} lost")
    return completed > 0 and lost == 0
