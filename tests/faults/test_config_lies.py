"""config.json that disagrees with the checkpoint is refused before anything is printed or
planned (moe_compile/compiler/shapes.py): before, `inspect` printed a hidden size and an expert
size the weights do not have, and `num_hidden_layers` 2 on a 3-layer checkpoint compiled with
2 layers. One case per field the adapters read, on headers alone (no tensor is read)."""

import pytest
from fault_helpers import altered_model


def _double(model_type: str, key: str) -> dict:
    from tiny_models import _COMMON, TINY_CONFIGS

    return {key: 2 * {**_COMMON, **TINY_CONFIGS[model_type]}[key]}


CASES = {
    # model_type, the lie, what the message names
    "qwen2_moe hidden_size": ("qwen2_moe", _double("qwen2_moe", "hidden_size"), "config.json"),
    "qwen2_moe moe_intermediate_size": ("qwen2_moe", _double("qwen2_moe", "moe_intermediate_size"), "MoE layer 0"),
    "qwen2_moe num_experts (fewer)": ("qwen2_moe", {"num_experts": 4}, "router_weight has shape [8, 32], expected [4, 32]"),
    "qwen2_moe shared_expert_intermediate_size": ("qwen2_moe", _double("qwen2_moe", "shared_expert_intermediate_size"),
                                                  "shared_expert"),
    "qwen2_moe intermediate_size (dense layer)": ("qwen2_moe", _double("qwen2_moe", "intermediate_size"), "layers.1.mlp"),
    "qwen2_moe num_attention_heads": ("qwen2_moe", {"num_attention_heads": 8}, "self_attn"),
    "qwen2_moe num_key_value_heads": ("qwen2_moe", {"num_key_value_heads": 4}, "self_attn"),
    "qwen2_moe vocab_size": ("qwen2_moe", _double("qwen2_moe", "vocab_size"), "embed_tokens"),
    "qwen2_moe num_hidden_layers (fewer)": ("qwen2_moe", {"num_hidden_layers": 2, "layer_types": None}, "num_hidden_layers 2"),
    "mixtral num_local_experts (more)": ("mixtral", {"num_local_experts": 16}, "missing"),
    "gpt_oss intermediate_size": ("gpt_oss", _double("gpt_oss", "intermediate_size"), "MoE layer 0"),
    "deepseek_v3 moe_intermediate_size": ("deepseek_v3", _double("deepseek_v3", "moe_intermediate_size"), "MoE layer 1"),
    "deepseek_v3 kv_lora_rank": ("deepseek_v3", _double("deepseek_v3", "kv_lora_rank"), "kv_a"),
    "deepseek_v2 n_shared_experts": ("deepseek_v2", {"n_shared_experts": 1}, "shared_experts"),
}


@pytest.mark.parametrize("model_type, lie, named", CASES.values(), ids=CASES.keys())
def test_a_lying_config_is_refused_before_inspect_prints(model_type, lie, named, tiny_model_dirs, cli, tmp_path):
    model = altered_model(tiny_model_dirs[model_type], tmp_path / "model", config=lie)
    outcome = cli("inspect", model)
    outcome.refused(named)
    assert outcome.stdout == ""


def test_a_checkpoint_with_more_layers_than_its_config_is_refused_by_the_pipeline(tiny_model_dirs, cli, tmp_path):
    model = altered_model(tiny_model_dirs["olmoe"], tmp_path / "model", config={"num_hidden_layers": 2})
    outcome = cli(model, "--budget", "0.75", "--out", tmp_path / "out" / "model.onnx")
    outcome.refused("decoder layers up to 2 (3 layers)", "num_hidden_layers 2")
    assert not any((tmp_path / "out").iterdir())


def test_the_truthful_configs_still_load(tiny_model_dirs, cli):
    for model in tiny_model_dirs.values():
        assert cli("inspect", model).code == 0
