"""Collective-hang drill (chaos/collective.py): real torch.distributed ranks (gloo on CPU, from .venv-vllm), one
SIGSTOPped; Forge's ProgressWatchdog must call the survivor hung within stall + 2 polls, torch's own timeout must fire
near its configured value and later, and no rank may outlive the drill. Loopback only, bounded (~30 s)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from forge.chaos.collective import _Progress, _rank_sample, run_drill
from forge.chaos.watchdog import HEALTHY, HUNG, ProgressWatchdog

pytestmark = pytest.mark.timeout(120)
STALL_S = 5.0
POLL_S = 1.0
TORCH_TIMEOUT_S = 10.0


def _torch_python() -> str:
    from forge.reference_stack.vllm_engine import vllm_python

    if not vllm_python().exists():
        pytest.fail(f"{vllm_python()} missing — run `make vllm` first", pytrace=False)
    return str(vllm_python())


def _alive_ranks(pids: list[int]) -> list[int]:
    """Pids still running our worker (a recycled pid running something else does not count)."""
    alive = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"collective.py" in cmdline:
            alive.append(pid)
    return alive


def test_rank_page_feeds_the_progress_watchdog() -> None:
    """A rank's own /metrics page, read as (in collective, iterations), drives the engine watchdog's decision."""
    progress = _Progress(rank=0, world_size=2)
    watchdog = ProgressWatchdog(stall_seconds=STALL_S)
    progress.iterations, progress.in_collective = 10, 1
    assert watchdog.observe("rank-0", _rank_sample(progress.page()), now=0.0) is None
    progress.iterations = 11  # moving: healthy
    assert watchdog.observe("rank-0", _rank_sample(progress.page()), now=1.0) is None
    # Stuck inside the collective: hung once the counter has been frozen for stall_seconds, not before.
    assert watchdog.observe("rank-0", _rank_sample(progress.page()), now=1.0 + STALL_S - 0.1) is None
    hung = watchdog.observe("rank-0", _rank_sample(progress.page()), now=1.0 + STALL_S)
    assert hung is not None and hung.state == HUNG
    progress.iterations = 12
    assert watchdog.observe("rank-0", _rank_sample(progress.page()), now=10.0).state == HEALTHY
    # Between collectives (gauge 0) nothing is outstanding, so a quiet counter is not a hang.
    idle = ProgressWatchdog(stall_seconds=STALL_S)
    progress.in_collective = 0
    for t in (0.0, 3.0, 20.0):
        assert idle.observe("rank-0", _rank_sample(progress.page()), now=t) is None
    with pytest.raises(ValueError, match="forge_collective_iterations_total"):
        _rank_sample("# TYPE other gauge\nother 1\n")


@pytest.mark.parametrize("args, message", [
    (["--ranks", "1"], "--ranks 1: use 2 to 64"),
    (["--stall-seconds", "4", "--poll-interval", "3"], "--poll-interval 3: must be > 0 and at most half"),
    (["--backend", "mpi"], "--backend 'mpi': use auto, gloo, nccl"),
    (["--worker-python", sys.executable], "has no torch"),
])
def test_drill_bad_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    forge = Path(sys.executable).with_name("forge")
    result = subprocess.run([str(forge), "chaos", "collective-drill", *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("forge: error: ")


def test_module_entry_bad_input_is_one_line_exit_2() -> None:
    """`python -m forge.chaos.collective drill` (the GPU machine's way in) rejects bad input the same way."""
    result = subprocess.run([sys.executable, "-m", "forge.chaos.collective", "drill", "--ranks", "2", "--stop-rank", "2",
                             "--torch-timeout-seconds", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "forge: error: --torch-timeout-seconds 0: must be > 0 (torch's default is 600 for NCCL)",
        "forge: error: --stop-rank 2: must be between 0 and 1",
        f"forge: error: --worker-python {sys.executable}: has no torch — give an interpreter that has it "
        "(e.g. .venv-vllm/bin/python, built by `make vllm`)"]


@pytest.mark.vllm
def test_gloo_drill_forge_watchdog_beats_torch_timeout(tmp_path: Path) -> None:
    journal_path = tmp_path / "collective-hang.json"
    journal = run_drill(ranks=2, stall_seconds=STALL_S, poll_interval_s=POLL_S, backend="auto",
                        torch_timeout_s=TORCH_TIMEOUT_S, worker_python=_torch_python(), journal_path=journal_path)
    written = json.loads(journal_path.read_text())
    m = written["measurements"]
    assert written["status"] == "completed" and written["deviated"] is False, written["notes"] or written["run"]
    assert "collective-hang" in written["experiment"]["tags"]
    assert (m["backend"], m["world_size"], m["stopped_rank"]) == ("gloo", 2, 1)
    assert m["iterations_before_stop"]["0"] >= 20 and m["iterations_before_stop"]["1"] >= 20

    # Forge: the survivor's counter froze inside the collective; the last sample showing progress is at most one
    # poll before the stop, and the stall is noticed at most one poll late.
    assert STALL_S - POLL_S <= m["detection_seconds"] <= STALL_S + 2 * POLL_S, m
    # torch: gloo's collective times out after the process group's timeout (the hung all-reduce may have begun a
    # moment before the stop), with its own error, well after Forge.
    assert m["torch_timeout_configured_seconds"] == TORCH_TIMEOUT_S
    assert TORCH_TIMEOUT_S - 1 <= m["torch_timeout_detection_seconds"] <= TORCH_TIMEOUT_S + 10, m
    assert m["torch_timeout_how"] == "collective raised"
    assert "timed out" in m["torch_timeout_error"].lower()
    assert m["torch_timeout_detection_seconds"] > m["detection_seconds"]
    assert m["forge_ahead_of_torch_seconds"] > 2

    run = {a["activity"]["name"]: a for a in written["run"]}
    assert run["forge-watchdog-detects-hang"]["status"] == "succeeded"
    assert run["forge-watchdog-detects-hang"]["output"]["transitions"][0]["replica"] == "rank-0"
    assert run["torch-timeout-detects-hang"]["status"] == "succeeded"
    rollback = written["rollbacks"][0]
    assert rollback["activity"]["name"] == "resume-and-kill-ranks" and rollback["status"] == "succeeded"
    assert m["processes_left"] == 0 and _alive_ranks(rollback["output"]["pids"]) == []
    assert journal.status == "completed"


@pytest.mark.vllm
def test_drill_that_cannot_start_fails_and_leaves_nothing(tmp_path: Path) -> None:
    """NCCL asked for on a CPU-only torch: the ranks die at init; the journal says why and nothing is left."""
    journal = run_drill(ranks=2, stall_seconds=STALL_S, poll_interval_s=POLL_S, backend="nccl",
                        torch_timeout_s=TORCH_TIMEOUT_S, worker_python=_torch_python(),
                        journal_path=tmp_path / "j.json")
    written = journal.as_dict()
    assert written["status"] == "failed"
    probe = written["steady_states"]["before"]["probes"][0]
    assert written["steady_states"]["before"]["steady_state_met"] is False
    assert "exited with" in probe["exception"] and "nccl" in probe["exception"].lower()
    assert written["run"] == []
    assert written["measurements"]["processes_left"] == 0
    assert _alive_ranks(written["rollbacks"][0]["output"]["pids"]) == []


@pytest.mark.vllm
def test_sigterm_mid_drill_still_kills_the_stopped_rank(tmp_path: Path) -> None:
    """A drill cancelled while a rank is SIGSTOPped runs its rollback: exit 130, journal 'interrupted', no rank left."""
    journal_path = tmp_path / "j.json"
    forge = Path(sys.executable).with_name("forge")
    drill = subprocess.Popen([str(forge), "chaos", "collective-drill", "--stall-seconds", str(STALL_S),
                              "--torch-timeout-seconds", str(TORCH_TIMEOUT_S), "--worker-python", _torch_python(),
                              "--journal", str(journal_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert drill.stdout is not None
        stopped_line = next((line for line in drill.stdout if "SIGSTOP rank" in line), "")
        assert stopped_line, drill.stderr.read() if drill.stderr else ""
        stopped_pid = int(stopped_line.rsplit("pid ", 1)[1].rstrip(")\n"))
        assert _alive_ranks([stopped_pid]) == [stopped_pid]
        drill.send_signal(signal.SIGTERM)
        out, err = drill.communicate(timeout=30)
    finally:
        if drill.poll() is None:
            drill.kill()
    assert drill.returncode == 130, err
    written = json.loads(journal_path.read_text())
    assert written["status"] == "interrupted"
    pids = written["rollbacks"][0]["output"]["pids"]
    assert stopped_pid in pids and _alive_ranks(pids) == []
