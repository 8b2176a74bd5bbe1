"""Every adapter: its IR, its weights, and the GroupedMoE op against its own transformers block."""

import pytest
import torch

from moe_compile.compiler.adapters import supported_model_types
from moe_compile.compiler.loader import load_moe_model
from moe_compile.compiler.rewrite import static_block
from moe_compile.grouped_moe_op import call_grouped_moe
from tiny_models import TINY_CONFIGS, tiny_config, tiny_model

ADAPTERS = supported_model_types()

EXPECTED = {  # model_type -> (MoE layer indices, scoring, normalize, routed scaling, groups, shared intermediate)
    "qwen2_moe": ([0, 2], "softmax", False, 1.0, (1, 1), 24),
    "qwen3_moe": ([0, 1, 2], "softmax", True, 1.0, (1, 1), 0),
    "olmoe": ([0, 1, 2], "softmax", False, 1.0, (1, 1), 0),
    "mixtral": ([0, 1, 2], "softmax", True, 1.0, (1, 1), 0),
    "deepseek_v2": ([1, 2], "softmax", False, 1.5, (4, 2), 32),
    "deepseek_v3": ([1, 2], "sigmoid", True, 2.5, (4, 2), 16),
    "gpt_oss": ([0, 1, 2], "softmax", True, 1.0, (1, 1), 0),
}


def test_every_registered_adapter_has_a_tiny_test_model():
    assert set(ADAPTERS) <= set(TINY_CONFIGS), f"no tiny model for {sorted(set(ADAPTERS) - set(TINY_CONFIGS))}"
    assert set(ADAPTERS) <= set(EXPECTED)
    assert {"qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v3"} <= set(ADAPTERS)


@pytest.mark.parametrize("model_type", ADAPTERS)
def test_ir_describes_the_model(model_type, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs[model_type])
    indices, scoring, normalize, scaling, groups, shared = EXPECTED[model_type]
    config = tiny_config(model_type)
    assert ir.model_type == model_type and [spec.index for spec in ir.layers] == indices
    for spec in ir.layers:
        assert (spec.hidden, spec.num_experts, spec.intermediate) == (32, 8, 16)
        assert spec.base_top_k == config.num_experts_per_tok
        attrs = spec.attributes
        assert (attrs.scoring, attrs.normalize_topk, attrs.routed_scaling) == (scoring, normalize, scaling)
        assert (attrs.n_group, attrs.topk_group) == groups
        assert (spec.shared_expert.intermediate if spec.shared_expert else 0) == shared
        assert spec.module_path == f"model.layers.{spec.index}.mlp"


@pytest.mark.parametrize("model_type", ADAPTERS)
def test_checkpoint_weights_equal_the_modules_weights(model_type, tiny_model_dirs):
    """The lazy safetensors path and the live-module path give the same GroupedMoE tensors."""
    from transformers import AutoModelForCausalLM

    ir = load_moe_model(tiny_model_dirs[model_type])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[model_type])
    for spec in ir.layers:
        from_disk = spec.load_weights()
        from_module = ir.adapter.block_weights(model.get_submodule(spec.module_path))
        assert from_disk.gate_up.shape == (8, 32, 32) and from_disk.down.shape == (8, 32, 16)
        for name in ("router_weight", "router_bias", "gate_up", "down", "gate_up_bias", "down_bias", "score_bias"):
            a, b = getattr(from_disk, name), getattr(from_module, name)
            assert (a is None) == (b is None), name
            if a is not None:
                assert torch.equal(a, b), name


def _router_to_one_expert(block_router, favourite: int) -> None:
    """Make every token rank the experts identically, `favourite` first, with no ties."""
    with torch.no_grad():
        experts, hidden = block_router.weight.shape
        ranks = torch.arange(experts, dtype=torch.float32) * 0.5
        ranks[favourite] = experts
        block_router.weight.copy_(ranks[:, None].expand(experts, hidden) / hidden)  # logits ~ rank * mean(x)
        for name in ("bias", "e_score_correction_bias"):  # per-expert offsets could reorder the ranks
            if getattr(block_router, name, None) is not None:
                getattr(block_router, name).zero_()


def _inputs(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if kind == "random":
        return torch.randn(2, 9, 32, generator=generator)
    return torch.rand(3, 4, 32, generator=generator) + 0.1  # positive: one ranking for every token


@pytest.mark.parametrize("kind", ["random", "all_to_one_expert"])
@pytest.mark.parametrize("model_type", ADAPTERS)
def test_op_equals_the_transformers_block(model_type, kind):
    model = tiny_model(model_type)
    from moe_compile.compiler.adapters import adapter_class

    adapter = adapter_class(model_type)(model.config)
    spec_index = EXPECTED[model_type][0][0]
    block = model.get_submodule(adapter.block_path(spec_index))
    router = adapter.router(block)
    if kind == "all_to_one_expert":
        _router_to_one_expert(router, favourite=5)
    x = _inputs(kind)
    flat = x.reshape(-1, 32)
    with torch.no_grad():
        # The routed part alone: the op against transformers' own router + experts.
        logits, hf_weights, hf_experts = router(flat)
        expected_routed = block.experts(flat, hf_experts, hf_weights)
        weights = adapter.block_weights(block)
        got_routed = call_grouped_moe(flat, logits, weights.gate_up, weights.down, adapter.attributes(),
                                      weights.gate_up_bias, weights.down_bias, weights.score_bias)
        # The whole block (shared experts included) against StaticTopKMoE.
        expected_block = block(x)
        got_block = static_block(adapter, block, adapter.base_top_k())(x)
    if kind == "all_to_one_expert":
        chosen = hf_experts.sort(dim=-1).values
        assert (chosen == chosen[0]).all() and 5 in chosen[0].tolist()
        assert len(set(hf_experts.flatten().tolist())) < 8  # some experts get no token
    torch.testing.assert_close(got_routed, expected_routed, rtol=1e-5, atol=1e-6)
    if isinstance(expected_block, tuple):
        expected_block, got_block = expected_block[0], got_block[0]
    torch.testing.assert_close(got_block, expected_block, rtol=1e-5, atol=1e-6)
