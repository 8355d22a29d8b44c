"""The progress watchdog's decision (chaos/watchdog.py), fed real /metrics pages captured from the simulator and a
fake clock; plus its scrape loop against a live simulator with the hang fault. Loopback only, bounded."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import stream_long_completion, wait_for

from forge.chaos.watchdog import (HEALTHY, HUNG, UNREACHABLE, ProgressWatchdog, WatchdogLoop, WatchTarget,
                                  metrics_url, progress_sample)
from forge.errors import InputError
from forge.reference_stack.simulator import serve

pytestmark = pytest.mark.timeout(120)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "metrics"
STALL = 5.0


def _wait_for(predicate, timeout_s: float = 10.0, step_s: float = 0.02):
    value = wait_for(predicate, timeout_s, step_s)
    if not value:
        raise AssertionError("condition not reached in time")
    return value


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    """Real vLLM-0.32-shaped pages from the simulator: idle, busy (early and later), hung (twice), resumed."""
    captured: dict[str, str] = {}
    # Slow steps so one long request stays running across every capture.
    with serve(port=0, step_overhead_s=0.01) as url, httpx.Client(timeout=10) as client:
        def page() -> str:
            return client.get(url + "/metrics").text

        captured["idle"] = page()

        threading.Thread(target=stream_long_completion, args=(url, "abcd" * 8), daemon=True).start()
        _wait_for(lambda: progress_sample(page()).generation_tokens > 5)
        captured["busy_early"] = page()
        time.sleep(0.3)
        captured["busy_later"] = page()
        client.post(url + "/_forge/faults", json={"mode": "hang"}).raise_for_status()
        time.sleep(0.3)  # the step in progress ends; then nothing moves
        captured["hung_1"] = page()
        time.sleep(0.3)
        captured["hung_2"] = page()
        client.post(url + "/_forge/faults", json={"mode": "none"}).raise_for_status()
        hung_tokens = progress_sample(captured["hung_2"]).generation_tokens
        _wait_for(lambda: progress_sample(page()).generation_tokens > hung_tokens)
        captured["resumed"] = page()
    return captured


def sample(pages, name):
    return progress_sample(pages[name])


def test_pages_are_what_the_scenarios_need(pages):
    # Guards the fixture itself: otherwise the tests below could pass on pages that prove nothing.
    assert sample(pages, "idle").requests_running == 0
    early, later = sample(pages, "busy_early"), sample(pages, "busy_later")
    assert early.requests_running > 0 and later.generation_tokens > early.generation_tokens
    hung_1, hung_2 = sample(pages, "hung_1"), sample(pages, "hung_2")
    assert hung_1.requests_running > 0 and hung_1.generation_tokens == hung_2.generation_tokens
    assert hung_1.generation_tokens >= later.generation_tokens
    assert sample(pages, "resumed").generation_tokens > hung_2.generation_tokens


def test_hung_replica_is_declared_after_stall_seconds(pages):
    watchdog = ProgressWatchdog(STALL)
    # busy_early, not busy_later: whether the step in progress when the hang began still ended after busy_later
    # is a race, but hung_1 >= busy_later > busy_early always holds (the fixture guard checks it).
    assert watchdog.observe("r", sample(pages, "busy_early"), 0.0) is None
    assert watchdog.observe("r", sample(pages, "hung_1"), 0.5) is None     # tokens moved since the last sample
    assert watchdog.observe("r", sample(pages, "hung_2"), 5.4) is None     # frozen 4.9 s < stall
    transition = watchdog.observe("r", sample(pages, "hung_2"), 5.5)
    assert transition is not None and transition.state == HUNG and transition.previous == HEALTHY
    assert transition.stalled_seconds == pytest.approx(5.0) and "running" in transition.reason
    assert watchdog.observe("r", sample(pages, "hung_2"), 9.0) is None      # declared once, not every poll
    assert watchdog.state("r") == HUNG


def test_idle_engine_is_never_hung(pages):
    watchdog = ProgressWatchdog(STALL)
    for t in range(0, 120, 2):
        assert watchdog.observe("r", sample(pages, "idle"), float(t)) is None
    assert watchdog.state("r") == HEALTHY


def test_busy_engine_producing_tokens_is_never_hung(pages):
    watchdog = ProgressWatchdog(STALL)
    busy = [sample(pages, "busy_early"), sample(pages, "busy_later"), sample(pages, "hung_1"), sample(pages, "resumed")]
    # Slow but moving: each sample 4 s apart (just under the stall), so tokens never stay frozen for the stall.
    for i, s in enumerate(busy):
        assert watchdog.observe("r", s, i * 4.0) is None
    assert watchdog.state("r") == HEALTHY


def test_hung_replica_recovers_when_tokens_move_again(pages):
    watchdog = ProgressWatchdog(STALL)
    watchdog.observe("r", sample(pages, "hung_1"), 0.0)
    assert watchdog.observe("r", sample(pages, "hung_2"), 6.0).state == HUNG
    transition = watchdog.observe("r", sample(pages, "resumed"), 7.0)
    assert transition.state == HEALTHY and transition.previous == HUNG and "moving" in transition.reason


def test_counter_reset_on_restart_is_not_a_hang_but_a_new_baseline(pages):
    watchdog = ProgressWatchdog(STALL)
    watchdog.observe("r", sample(pages, "hung_2"), 0.0)
    # The restarted engine's counter starts over (lower than before) while requests run: not a stall.
    assert watchdog.observe("r", sample(pages, "busy_early"), 4.0) is None
    assert watchdog.observe("r", sample(pages, "busy_early"), 8.5) is None   # 4.5 s since the reset
    # ...and the new baseline still catches a hang of the restarted engine.
    assert watchdog.observe("r", sample(pages, "busy_early"), 9.0).state == HUNG


def test_failed_scrape_is_unreachable_not_hung_and_forgets_the_baseline(pages):
    watchdog = ProgressWatchdog(STALL)
    watchdog.observe("r", sample(pages, "hung_1"), 0.0)
    assert watchdog.unreachable("r", 3.0, "ConnectError").state == UNREACHABLE
    assert watchdog.observe("r", sample(pages, "hung_2"), 4.0).state == HEALTHY   # a fresh first sample
    assert watchdog.observe("r", sample(pages, "hung_2"), 8.5) is None              # 4.5 s since that sample


def test_replicas_are_judged_independently(pages):
    watchdog = ProgressWatchdog(STALL)
    for t in (0.0, 3.0, 6.0):
        watchdog.observe("stuck", sample(pages, "hung_2"), t)
        watchdog.observe("idle", sample(pages, "idle"), t)
    assert (watchdog.state("stuck"), watchdog.state("idle")) == (HUNG, HEALTHY)


def test_other_catalog_engines_and_unusable_ones():
    sglang = progress_sample((FIXTURES / "sglang.txt").read_text())
    assert sglang.generation_tokens > 0
    with pytest.raises(InputError, match="forge_generation_tokens_total"):
        progress_sample((FIXTURES / "triton-trtllm.txt").read_text())
    with pytest.raises(InputError, match="stall-seconds"):
        ProgressWatchdog(0.1)


def test_loop_detects_a_live_hang_within_stall_plus_two_polls():
    stall, poll = 2.0, 0.25
    with serve(port=0, step_overhead_s=0.01) as url:
        transitions = []
        loop = WatchdogLoop([WatchTarget("sim", metrics_url(url))], ProgressWatchdog(stall),
                            on_transition=transitions.append, poll_interval_s=poll)

        threading.Thread(target=stream_long_completion, args=(url,), daemon=True).start()
        loop.start()
        try:
            _wait_for(lambda: progress_sample(httpx.get(url + "/metrics").text).generation_tokens > 5)
            time.sleep(1.0)
            assert transitions == []  # busy, tokens moving: no false positive over 4 polls
            httpx.post(url + "/_forge/faults", json={"mode": "hang"}).raise_for_status()
            injected = time.monotonic()
            hung = _wait_for(lambda: [t for t in transitions if t.state == HUNG], timeout_s=stall + 5)[0]
            assert hung.at - injected <= stall + 2 * poll + 1.0  # + scrape time, with room for a loaded CI machine
            assert hung.at - injected >= stall - poll            # not before the stall could have elapsed
            httpx.post(url + "/_forge/faults", json={"mode": "none"}).raise_for_status()
            healthy = _wait_for(lambda: [t for t in transitions if t.state == HEALTHY], timeout_s=5)[0]
            assert healthy.previous == HUNG
        finally:
            loop.stop()
