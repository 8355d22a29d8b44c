"""Forge's chaos activities: what `provider: {type: python, module: forge.chaos.actions, func: ...}` calls.

Each takes the runner's `lab` (the engines, load and watchdog it started) first, then the experiment's arguments,
and returns a JSON-able output for the journal. A probe's output is compared with its tolerance by the runner;
an activity that cannot do its job raises (the journal records it as failed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

from forge.chaos.watchdog import HUNG, progress_sample

if TYPE_CHECKING:  # pragma: no cover
    from forge.chaos.runner import Lab

FAULT_MODES = ("hang", "crash", "slow", "error_rate", "xid", "none")
POLL_S = 0.1


def _tokens(lab: Lab, replica: int) -> tuple[float, float]:
    sample = progress_sample(httpx.get(lab.replicas[replica].url + "/metrics", timeout=2).text)
    return sample.requests_running, sample.generation_tokens


def count_hung_replicas(lab: Lab) -> int:
    return sum(1 for r in lab.replicas if lab.watchdog.state(r.name) == HUNG)


def all_replicas_progress(lab: Lab, window_seconds: float = 1.5) -> bool:
    """True when every replica's generation-token counter moved within the window (the load is being served)."""
    before = [_tokens(lab, i)[1] for i in range(len(lab.replicas))]
    time.sleep(window_seconds)
    after = [_tokens(lab, i)[1] for i in range(len(lab.replicas))]
    return all(a > b for a, b in zip(after, before))


def inject_fault(lab: Lab, replica: int, mode: str, require_running: bool = False, wait_seconds: float = 10,
                 **fault: Any) -> dict[str, Any]:
    """POST the simulator's fault API; with require_running, wait (bounded) until requests are running first."""
    if mode not in FAULT_MODES:
        raise ValueError(f"fault mode {mode!r}: use one of {', '.join(FAULT_MODES)}")
    target = lab.replicas[replica]
    running = 0.0
    if require_running:
        # A hang with nothing running is indistinguishable from idle: make sure the fault freezes real work.
        deadline = time.monotonic() + wait_seconds
        while (running := _tokens(lab, replica)[0]) <= 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {target.name}: no request running within {wait_seconds} s")
            time.sleep(POLL_S)
    answer = httpx.post(target.url + "/_forge/faults", json={"mode": mode, **fault}, timeout=5)
    answer.raise_for_status()
    lab.fault_injected_at[target.name] = time.monotonic()
    return {"replica": target.name, "url": target.url, "requests_running_at_injection": running,
            "active": answer.json().get("active")}


def await_hang_detection(lab: Lab, replica: int, timeout_seconds: float = 60) -> dict[str, Any]:
    """Wait for the watchdog to declare the replica hung; detection_seconds counts from the fault's injection."""
    name = lab.replicas[replica].name
    injected = lab.fault_injected_at.get(name)
    if injected is None:
        raise RuntimeError(f"replica {name}: no fault was injected, nothing to detect")
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        hung = [t for t in lab.watchdog_loop.transitions() if t.replica == name and t.state == HUNG and t.at >= injected]
        if hung:
            detection = hung[0].at - injected
            lab.journal.measurements["detection_seconds"] = round(detection, 3)
            return {"replica": name, "detection_seconds": round(detection, 3), "reason": hung[0].reason,
                    "bound_seconds": lab.watchdog.stall_seconds + 2 * lab.watchdog_loop.poll_interval_s}
        time.sleep(POLL_S)
    raise TimeoutError(f"replica {name}: the watchdog did not declare it hung within {timeout_seconds} s")


def await_recovery(lab: Lab, replica: int, timeout_seconds: float = 60) -> dict[str, Any]:
    """Wait until the remediation finished and the replica's token counter moves again (served traffic)."""
    target = lab.replicas[replica]
    deadline = time.monotonic() + timeout_seconds
    if not lab.remediation_done.wait(timeout_seconds):
        raise TimeoutError(f"replica {target.name}: remediation did not finish within {timeout_seconds} s")
    if lab.remediation_error:
        raise RuntimeError(f"replica {target.name}: remediation failed: {lab.remediation_error}")
    first = None
    while time.monotonic() < deadline:
        try:
            tokens = _tokens(lab, replica)[1]
        except httpx.HTTPError:
            tokens = None
        if tokens is not None:
            if first is None:
                first = tokens
            elif tokens > first:
                recovered_at = time.monotonic()
                detected_at = lab.detected_at.get(target.name)
                recovery = round(recovered_at - detected_at, 3) if detected_at else None
                lab.journal.measurements["recovery_seconds"] = recovery
                return {"replica": target.name, "recovery_seconds": recovery,
                        "restart_seconds": lab.journal.measurements.get("restart_seconds")}
        time.sleep(POLL_S)
    raise TimeoutError(f"replica {target.name}: no new tokens within {timeout_seconds} s after remediation")


def clear_faults(lab: Lab) -> dict[str, Any]:
    """Rollback: fault mode none on every replica. A refused connection means the process is gone, and its faults
    (held in its memory) with it; any other failure leaves a fault possibly active, so the rollback fails."""
    cleared, gone, failed = [], [], []
    for target in lab.replicas:
        try:
            httpx.post(target.url + "/_forge/faults", json={"mode": "none"}, timeout=5).raise_for_status()
            cleared.append(target.name)
        except httpx.ConnectError:
            gone.append(target.name)
        except httpx.HTTPError as exc:
            failed.append(f"{target.name}: {type(exc).__name__}: {exc}")
    if failed:
        raise RuntimeError(f"faults may still be active: {'; '.join(failed)}")
    return {"cleared": cleared, "process_gone": gone}


def stop_load(lab: Lab) -> dict[str, Any]:
    """Rollback: end the load (in-flight requests are cancelled and counted) and return its outcome counts."""
    return lab.stop_load()
