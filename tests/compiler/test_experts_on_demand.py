"""The streamed export's helper reads an MoE layer's router and experts one at a time
(compiler/weight_sources.py: reader_without_layer): the same tensors the adapter's whole-layer
read assembles, for every architecture that keeps per-expert tensors."""

import pytest
import torch

from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.loader import load_moe_model
from moe_compile.compiler.weight_sources import reader_without_layer
from tiny_models import TINY_CONFIGS


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_one_expert_at_a_time_is_the_layer_read_whole(model_type, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs[model_type])
    checkpoint = SafetensorsCheckpoint(ir.path)
    spec = ir.layers[-1]
    whole = spec.load_weights()
    readers = {field: reader_without_layer(ir, checkpoint, spec.index, field, tuple(getattr(whole, field).shape),
                                           per_expert=True)
               for field in ("router_weight", "gate_up", "down")}
    if model_type == "gpt_oss":  # its experts are stored fused and laid out by its own read_weights
        assert set(readers.values()) == {None}
        return
    assert torch.equal(readers["router_weight"](), whole.router_weight)
    for field in ("gate_up", "down"):
        experts = readers[field]()
        assert experts.shape == getattr(whole, field).shape
        for expert in range(experts.shape[0]):
            assert torch.equal(experts[expert], getattr(whole, field)[expert]), (field, expert)
    assert reader_without_layer(ir, checkpoint, spec.index, "score_bias", (1,), per_expert=True) is None
    assert reader_without_layer(ir, checkpoint, spec.index, "down", experts.shape, per_expert=False) is None
