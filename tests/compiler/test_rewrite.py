"""The rewrite pass: whole-model logits at the base top-k and at smaller k, for every adapter."""

import copy

import pytest
import torch

from moe_compile.compiler.adapters import supported_model_types
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import StaticTopKMoE, rewrite_model
from moe_compile.errors import InvalidInput

ADAPTERS = supported_model_types()


def _logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


def _input_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("model_type", ADAPTERS)
def test_base_top_k_keeps_the_logits(model_type, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs[model_type])
    original = load_causal_lm(ir)
    rewritten = rewrite_model(copy.deepcopy(original), ir)
    ids = _input_ids(original.config.vocab_size)
    blocks = [m for m in rewritten.modules() if isinstance(m, StaticTopKMoE)]
    assert len(blocks) == len(ir.layers)
    assert (_logits(rewritten, ids) - _logits(original, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("model_type", ADAPTERS)
def test_smaller_k_equals_the_block_run_at_that_k(model_type, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs[model_type])
    original = load_causal_lm(ir)
    plan = {spec.index: max(1, spec.base_top_k - 1 - n % 2) for n, spec in enumerate(ir.layers)}
    reference = copy.deepcopy(original)
    for spec in ir.layers:  # transformers' own block, told to use fewer experts
        ir.adapter.router(reference.get_submodule(spec.module_path)).top_k = plan[spec.index]
    rewritten = rewrite_model(copy.deepcopy(original), ir, plan)
    assert [rewritten.get_submodule(spec.module_path).top_k for spec in ir.layers] == list(plan.values())
    ids = _input_ids(original.config.vocab_size)
    smaller = _logits(rewritten, ids)
    assert (smaller - _logits(reference, ids)).abs().max().item() <= 1e-5
    assert (smaller - _logits(original, ids)).abs().max().item() > 1e-3  # fewer experts really changed it


def test_rewrite_shares_parameters_instead_of_copying(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    model = load_causal_lm(ir)
    spec = ir.layers[0]
    experts = model.get_submodule(spec.module_path).experts
    rewrite_model(model, ir)
    block = model.get_submodule(spec.module_path)
    assert block.w_gate_up.data_ptr() == experts.gate_up_proj.data_ptr()
    assert block.w_down.data_ptr() == experts.down_proj.data_ptr()


@pytest.mark.parametrize("plan, message", [
    ({0: 0}, "layer 0: top_k=0 is outside 1..8"),
    ({2: 9}, "layer 2: top_k=9 is outside 1..8"),
    ({1: 2}, "layer 1 is not an MoE layer"),
])
def test_out_of_range_top_k_is_refused(plan, message, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    model = load_causal_lm(ir)
    with pytest.raises(InvalidInput, match=message):
        rewrite_model(model, ir, plan)
    assert not any(isinstance(m, StaticTopKMoE) for m in model.modules())  # nothing half-rewritten


def test_group_limited_top_k_above_the_eligible_experts_is_refused(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["deepseek_v3"])  # 8 experts, 4 groups, 2 kept: 4 eligible
    with pytest.raises(InvalidInput, match="layer 1: top_k=5 is outside 1..4"):
        rewrite_model(load_causal_lm(ir), ir, {1: 5})
