"""Model geometry from model.architecture and from Hugging Face config.json files (GQA, MoE, MLA, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge.errors import InputError
from forge.models import from_architecture, from_config, geometry, read_config
from forge.schema import Architecture, Deployment

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def _config(name: str):
    path = FIXTURES / name / "config.json"
    return from_config(read_config(path, str(path)), str(path))


def _deployment(model: dict, tp: int = 1, gpu: str = "H100-SXM-80GB") -> Deployment:
    return Deployment.model_validate({
        "apiVersion": "forge/v1", "kind": "InferenceDeployment", "metadata": {"name": "geo"},
        "model": {"name": "m", **model}, "engine": {"name": "vllm", "args": {"tensor_parallel_size": tp}},
        "hardware": {"gpu": gpu, "gpus_per_replica": tp},
    })


def test_tiny_llama_config_counts_every_parameter():
    geo = _config("tiny-llama")
    assert (geo.layers, geo.kv_heads, geo.head_dim, geo.attention_heads) == (2, 2, 32, 4)
    # embed + untied lm_head (2·2048·128) + 2 layers · (attention 49,152 + SwiGLU 98,304 + 2 norms 256) + final norm
    assert geo.total_params == 2 * 2048 * 128 + 2 * (49_152 + 98_304 + 256) + 128 == 819_840
    assert geo.active_params == geo.total_params
    assert geo.config_dtype == "bf16"
    assert geo.kv_elements_per_token_per_layer(1) == 2 * 2 * 32


def test_mixtral_moe_total_and_active_parameters():
    geo = _config("mixtral-8x7b")
    assert geo.is_moe and (geo.num_experts, geo.experts_per_token) == (8, 2)
    # Mistral AI publishes 46.7B total and 12.9B active parameters for Mixtral 8x7B.
    assert geo.total_params == pytest.approx(46.7e9, rel=0.01)
    assert geo.active_params == pytest.approx(12.9e9, rel=0.01)
    assert geo.expert_params == 32 * 8 * 3 * 4096 * 14336


def test_deepseek_v3_mla_kv_is_latent_plus_rope_and_not_split_by_tp():
    geo = _config("deepseek-v3")
    assert geo.uses_mla and geo.is_moe
    # DeepSeek-V3 report: 671B total, 37B activated per token.
    assert geo.total_params == pytest.approx(671e9, rel=0.01)
    assert geo.active_params == pytest.approx(37e9, rel=0.03)
    for tp in (1, 8, 16):
        assert geo.kv_elements_per_token_per_layer(tp) == 512 + 64


def test_gqa_kv_heads_shard_then_replicate_across_tensor_parallel():
    arch = Architecture(params_billion=70, layers=80, hidden_size=8192, attention_heads=64, kv_heads=8, head_dim=128)
    geo = from_architecture(arch)
    assert [geo.kv_heads_per_gpu(tp) for tp in (1, 2, 8, 16)] == [8, 4, 1, 1]


def test_architecture_moe_splits_expert_parameters():
    arch = Architecture(params_billion=46.7, active_params_billion=12.9, layers=32, hidden_size=4096,
                        attention_heads=32, kv_heads=8, num_experts=8, experts_per_token=2)
    geo = from_architecture(arch)
    # shared + experts = 46.7B, shared + experts/4 = 12.9B  ⇒  experts = 33.8B / 0.75
    assert geo.expert_params == pytest.approx(33.8e9 / 0.75)


def test_config_path_is_relative_to_the_deploy_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((FIXTURES / "tiny-llama" / "config.json").read_text())
    geo = geometry(_deployment({"config_path": "m/config.json"}, gpu="CPU"), tmp_path)
    assert geo.layers == 2 and geo.kv_heads == 2
    # A directory works too: its config.json is read.
    assert geometry(_deployment({"config_path": "m"}, gpu="CPU"), tmp_path).head_dim == 32


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 0}, "num_hidden_layers is 0"),
    ({"num_key_value_heads": 3}, "does not divide num_attention_heads"),
    ({"torch_dtype": "float8_weird"}, "unknown torch_dtype 'float8_weird'"),
    ({"hidden_size": "big"}, "'hidden_size' is 'big'"),
    ({"num_local_experts": 8}, "num_experts_per_tok is missing"),
])
def test_bad_config_json_is_a_one_line_input_error(tmp_path, change, message):
    cfg = json.loads((FIXTURES / "tiny-llama" / "config.json").read_text())
    cfg.update(change)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError) as err:
        geometry(_deployment({"config_path": "config.json"}, gpu="CPU"), tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("{}", "'num_hidden_layers' is missing"),
])
def test_missing_or_garbage_config_json(tmp_path, content, message):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(InputError, match=message):
        geometry(_deployment({"config_path": "config.json"}, gpu="CPU"), tmp_path)


def test_no_geometry_at_all_names_both_fixes():
    with pytest.raises(InputError, match="neither architecture nor config_path"):
        geometry(_deployment({}))


@pytest.mark.parametrize("arch, tp, message", [
    ({"attention_heads": 12, "kv_heads": 5}, 1, "kv_heads: 5 does not divide attention_heads 12"),
    ({"attention_heads": 64, "kv_heads": 8}, 3, "does not divide attention_heads 64"),
    ({"attention_heads": 48, "kv_heads": 8}, 6, "does not divide kv_heads 8"),
    ({"attention_heads": 12, "kv_heads": 2}, 3, "not a multiple of it"),
])
def test_bad_heads_or_tensor_parallel(arch, tp, message):
    model = {"architecture": {"params_billion": 8, "layers": 32, "hidden_size": 4096, **arch}}
    with pytest.raises(InputError, match=message):
        geometry(_deployment(model, tp=tp))
