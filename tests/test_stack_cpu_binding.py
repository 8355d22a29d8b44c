"""Per-replica CPU binding for real vLLM (VLLM_CPU_OMP_THREADS_BIND): every TP rank of every replica on its own
cores when there are enough, round-robin with a warning when not. Pure logic; the real engines' affinity is
checked in tests/test_stack_vllm.py."""

from __future__ import annotations

import os

import pytest

from forge.reference_stack.stack import StackInputError, StackPlan
from forge.reference_stack.vllm_engine import (EngineConfig, allowed_cores, cpu_binding, format_cores,
                                               parse_cores)


def _rank_cores(bind: str) -> list[list[int]]:
    return [parse_cores(rank) for rank in bind.split("|")]


def _all_disjoint(binds: list[str]) -> bool:
    cores = [core for bind in binds for rank in _rank_cores(bind) for core in rank]
    return len(cores) == len(set(cores))


@pytest.mark.parametrize("replicas, tp, cores, expected", [
    # 2 cores (this machine): one rank each while they fit; one replica keeps a core for its API server/scheduler.
    (1, 1, [0, 1], ["0"]),
    (2, 1, [0, 1], ["0", "1"]),
    (1, 2, [0, 1], ["0|1"]),              # what the notes measured TP=2 to need on 2 cores
    # 4 cores
    (1, 1, [0, 1, 2, 3], ["0-2"]),        # 3 for the worker, 1 left for the API server and scheduler
    (2, 1, [0, 1, 2, 3], ["0", "1"]),     # 2 cores left: one per replica's API server and scheduler
    (1, 2, [0, 1, 2, 3], ["0|1"]),
    (2, 2, [0, 1, 2, 3], ["0|1", "2|3"]),
    # 16 cores: equal blocks of 3, one core per replica left over
    (2, 2, list(range(16)), ["0-2|3-5", "6-8|9-11"]),
    # the affinity mask need not be contiguous (taskset, cpusets)
    (2, 1, [2, 5, 7, 9], ["2", "5"]),
])
def test_enough_cores_gives_every_rank_its_own(replicas, tp, cores, expected):
    binding = cpu_binding(replicas, tp, cores)
    assert binding.binds == expected
    assert binding.warning is None and not binding.shared
    assert _all_disjoint(binding.binds)
    assert all(len(_rank_cores(bind)) == tp for bind in binding.binds)  # vLLM asserts one list per TP rank
    assert {c for bind in binding.binds for rank in _rank_cores(bind) for c in rank} <= set(cores)


@pytest.mark.parametrize("replicas, tp, cores, expected", [
    (2, 2, [0, 1], ["0|1", "0|1"]),
    (3, 1, [0, 1], ["0", "1", "0"]),
    (2, 1, [4], ["4", "4"]),
    (3, 2, [0, 1, 2, 3], ["0|1", "2|3", "0|1"]),
])
def test_fewer_cores_than_ranks_shares_them_round_robin_with_one_warning(replicas, tp, cores, expected):
    binding = cpu_binding(replicas, tp, cores)
    assert binding.binds == expected and binding.shared
    assert "\n" not in binding.warning and "contend" in binding.warning
    assert f"{replicas * tp} ranks on {len(cores)} core(s)" in binding.warning


def test_default_cores_are_this_process_affinity():
    assert allowed_cores() == sorted(os.sched_getaffinity(0))
    binding = cpu_binding(1, 1)
    assert binding.cores == allowed_cores()
    assert set(parse_cores(binding.binds[0])) <= set(allowed_cores())


def test_core_lists_round_trip_in_vllms_format():
    assert format_cores([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert parse_cores("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert format_cores([3]) == "3"


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError):
        cpu_binding(0, 1, [0, 1])
    with pytest.raises(ValueError):
        cpu_binding(1, 1, [])


def test_the_engine_gets_its_binding_and_the_stack_records_only_what_it_sets(tmp_path):
    config = EngineConfig(model_dir=tmp_path, port=1, kv_cache_space_gib=1, omp_threads_bind="1")
    overrides = config.env_overrides()
    assert overrides == {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                         "VLLM_CPU_OMP_THREADS_BIND": "1"}
    env = config.environment({"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "0"})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["PATH"] == "/bin"
    # TP > 1 with no explicit binding keeps the old default (one core per rank from 0).
    assert EngineConfig(model_dir=tmp_path, port=1, tensor_parallel_size=2).env_overrides()[
        "VLLM_CPU_OMP_THREADS_BIND"] == "0|1"


def test_bad_stall_seconds_is_bad_input(tmp_path):
    with pytest.raises(StackInputError, match="--stall-seconds 0.5"):
        StackPlan(state_dir=tmp_path, supervise=True, stall_seconds=0.5, rule_files=[]).check()
