"""Forge's capacity model against real vLLM (CPU): the KV cache size it predicts from deploy.yaml must equal,
token for token and block for block, what the engine allocates.

Three engines run at once (one start-up of about a minute each on 2 cores; together ~1.5-2 min instead of ~2 min
in a row), each a different sizing path of vLLM's CPU backend:
- VLLM_CPU_KVCACHE_SPACE=1 with the CPU default block size (128): the figure in ../shared/notes/vllm-cpu.md;
- --kv-cache-memory-bytes 300,000,000 with --block-size 32: not a whole number of blocks, so rounding shows;
- tensor parallel 2 with 1 GiB per rank: KV bytes per token per rank halve, tokens double.
(An fp8 KV cache would be a fourth path, but vLLM's CPU backend refuses it without AVX-512/AMX:
"FP8 KV cache on CPU requires x86 with AVX-512 or AMX.")
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forge.readiness.capacity import estimate
from forge.reference_stack import model_build
from forge.reference_stack.vllm_engine import (
    LOOPBACK_OPENER, REPO_ROOT, EngineConfig, VllmEngine, free_port, stop_all, vllm_python,
)
from forge.schema import Deployment

GiB = 1024**3
# Engine start-ups overlap; three at once measured 90-100 s to /health on 2 cores. Covers the module's setup.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(480)]
STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
COMPLETION_TOKENS = 16
MODEL_DIR = REPO_ROOT / model_build.DEFAULT_MODEL_DIR
# ../shared/notes/vllm-cpu.md, measured with vllm-cpu 0.32.0: "CPU KV cache size: 2,097,152 tokens" at 1 GiB.
DOCUMENTED_TOKENS_AT_1_GIB = 2_097_152


@dataclass(frozen=True)
class KvCase:
    id: str
    engine: dict            # EngineConfig fields besides model and port
    deployment_args: dict   # the same sizing, as deploy.yaml's engine.args


CASES = [
    KvCase("1GiB-env-default-block", {"kv_cache_space_gib": 1},
           # vLLM's CPU backend uses 128-token blocks unless told otherwise (vllm/platforms/cpu.py).
           {"kv_cache_memory_bytes": 1 * GiB, "block_size": 128}),
    KvCase("300MB-flag-block32", {"kv_cache_memory_bytes": 300_000_000, "block_size": 32},
           {"kv_cache_memory_bytes": 300_000_000, "block_size": 32}),
    KvCase("tp2-1GiB-per-rank", {"kv_cache_space_gib": 1, "tensor_parallel_size": 2},
           {"kv_cache_memory_bytes": 1 * GiB, "block_size": 128, "tensor_parallel_size": 2}),
]
CASE_IDS = [case.id for case in CASES]


def deployment_for(case: KvCase) -> Deployment:
    return Deployment.model_validate({
        "apiVersion": "forge/v1", "kind": "InferenceDeployment", "metadata": {"name": f"tiny-llama-{case.id.lower()}"},
        "model": {"name": "tiny-llama", "config_path": str(MODEL_DIR / "config.json")},
        "engine": {"name": "vllm", "args": case.deployment_args},
        "hardware": {"gpu": "CPU"},
    })


def http_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with LOOPBACK_OPENER.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.load(response)


def metric_samples(engine: VllmEngine) -> dict[str, list]:
    with LOOPBACK_OPENER.open(f"{engine.base_url}/metrics", timeout=REQUEST_TIMEOUT_S) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.fixture(scope="module")
def model_dir() -> Path:
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"{python} missing — run `make vllm` first")
    return model_build.ensure_built(python, MODEL_DIR)


@pytest.fixture(scope="module")
def engines(model_dir: Path, tmp_path_factory) -> dict[str, VllmEngine]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    started: dict[str, VllmEngine] = {}
    try:
        for case in CASES:  # start all, then wait: the start-ups overlap
            config = EngineConfig(model_dir=model_dir, port=free_port(), served_model_name="tiny-llama",
                                  # Eager: no torch.compile and, with an explicit KV size, no warm-up pass
                                  # (~40 s instead of ~47-110 s per start); KV sizing does not depend on it.
                                  enforce_eager=True, **case.engine)
            started[case.id] = VllmEngine(config, logs / f"{case.id}.log", startup_timeout_s=STARTUP_TIMEOUT_S)
            started[case.id].start()
        for engine in started.values():
            engine.wait_healthy()
        yield started
    finally:
        # Also when a start, a wait or a test fails: every engine started so far, its whole process group.
        stop_all(list(started.values()))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_logged_kv_tokens_equal_capacity_model(case: KvCase, engines: dict[str, VllmEngine]) -> None:
    logged = engines[case.id].kv_cache_tokens()
    predicted = estimate(deployment_for(case), REPO_ROOT)
    assert predicted.fits, predicted.fit_reason
    assert logged == predicted.kv_tokens_per_replica, (
        f"vLLM logged {logged:,} KV tokens, Forge predicts {predicted.kv_tokens_per_replica:,} "
        f"({predicted.kv_bytes_per_token} B/token, {predicted.kv_blocks_per_replica} blocks)")


def test_reference_configuration_logs_the_documented_figure(engines: dict[str, VllmEngine]) -> None:
    # An anchor independent of Forge: if engine and model drifted together, this still catches it.
    assert engines["1GiB-env-default-block"].kv_cache_tokens() == DOCUMENTED_TOKENS_AT_1_GIB


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cache_config_metric_shows_the_predicted_blocks(case: KvCase, engines: dict[str, VllmEngine]) -> None:
    engine = engines[case.id]
    samples = metric_samples(engine)
    assert "vllm:kv_cache_usage_perc" in samples
    assert all(0.0 <= s.value <= 1.0 for s in samples["vllm:kv_cache_usage_perc"])
    (info,) = samples["vllm:cache_config_info"]
    predicted = estimate(deployment_for(case), REPO_ROOT)
    assert int(info.labels["num_gpu_blocks"]) == predicted.kv_blocks_per_replica
    assert int(info.labels["block_size"]) == case.deployment_args["block_size"]
    assert int(info.labels["kv_cache_size_tokens"]) == engine.kv_cache_tokens()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_completion_returns_tokens(case: KvCase, engines: dict[str, VllmEngine]) -> None:
    engine = engines[case.id]
    body = {"model": engine.model_name, "prompt": "def parse_args(argv):", "max_tokens": COMPLETION_TOKENS,
            "ignore_eos": True, "temperature": 0}
    reply = http_json(f"{engine.base_url}/v1/completions", body)
    assert reply["usage"]["completion_tokens"] == COMPLETION_TOKENS
    assert reply["choices"][0]["text"]
    # The token counter the dashboards read moved by at least this request's tokens.
    generated = sum(s.value for s in metric_samples(engine)["vllm:generation_tokens_total"])
    assert generated >= COMPLETION_TOKENS


def test_chat_completion_uses_the_generated_chat_template(engines: dict[str, VllmEngine]) -> None:
    engine = engines["1GiB-env-default-block"]
    body = {"model": engine.model_name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
            "ignore_eos": True}
    reply = http_json(f"{engine.base_url}/v1/chat/completions", body)
    assert reply["usage"]["completion_tokens"] == 8
    # <s><|user|>\nhello</s>\n<|assistant|>\n : more prompt tokens than "hello" alone, so the template applied.
    assert reply["usage"]["prompt_tokens"] > 3
