"""LExI stage 1: the one-pass Δ equals re-running the layer per k, streamed one layer at a time."""

import pytest
import torch
import torch.nn.functional as F

from moe_compile.compiler.checkpoint import ReadMeter
from moe_compile.compiler.lexi.profile import ProfileOptions, layer_deltas, profile_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import grouped_moe_reference

OPTIONS = ProfileOptions(batch=2, seq_len=16, draws=3, seed=7)


def _deltas_by_rerun(spec, weights, options):
    """The slow definition: run the whole layer once per k on the same draws."""
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + spec.index)
    totals = {k: 0.0 for k in range(options.k_min, spec.base_top_k + 1)}
    for _ in range(options.draws):
        x = torch.randn(options.tokens, spec.hidden, generator=generator) * options.scale
        logits = F.linear(x, weights.router_weight, weights.router_bias)

        def run(k):
            return grouped_moe_reference(x, logits, weights.gate_up, weights.down, spec.attributes.with_top_k(k),
                                         weights.gate_up_bias, weights.down_bias, weights.score_bias)

        y_base = run(spec.base_top_k)
        for k in totals:
            totals[k] += torch.linalg.matrix_norm(run(k) - y_base).item()
    return {k: total / options.draws for k, total in totals.items()}


@pytest.mark.parametrize("model_type", ["qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss"])
def test_one_pass_equals_rerunning_the_layer_per_k(model_type, tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs[model_type])
    for spec in ir.layers:
        weights = spec.load_weights()
        fast = layer_deltas(spec, weights, OPTIONS)
        slow = _deltas_by_rerun(spec, weights, OPTIONS)
        assert list(fast) == list(range(1, spec.base_top_k + 1))
        assert fast[spec.base_top_k] == 0.0
        for k in fast:
            assert fast[k] == pytest.approx(slow[k], rel=1e-5, abs=1e-6)
        assert fast[1] >= fast[spec.base_top_k - 1] > 0  # fewer experts, larger change


def test_profile_is_deterministic_and_layers_are_independent(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["olmoe"])
    first = profile_model(ir, OPTIONS, show_progress=False)
    assert first.to_json() == profile_model(ir, OPTIONS, show_progress=False).to_json()
    other_seed = profile_model(ir, ProfileOptions(**{**OPTIONS.__dict__, "seed": 8}), show_progress=False)
    assert other_seed.layers[0].delta != first.layers[0].delta
    # Layer j's Δ does not depend on which other layers were profiled before it.
    alone = layer_deltas(ir.layers[2], ir.layers[2].load_weights(), OPTIONS)
    assert alone == first.layers[2].delta


def test_profile_streams_one_layer_at_a_time(tiny_model_dirs):
    meter = ReadMeter()
    ir = load_moe_model(tiny_model_dirs["mixtral"], meter=meter)
    profile_model(ir, OPTIONS, show_progress=False)
    layer_bytes = ir.layers[0].load_weights().nbytes
    assert meter.bytes_read == (len(ir.layers) + 1) * layer_bytes  # every layer read once (+ the line above)
    assert meter.peak_live_bytes <= layer_bytes * 1.2


def test_k_min_above_the_base_top_k_is_refused(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["mixtral"])
    with pytest.raises(InvalidInput, match="--k-min 3 is above the smallest base top-k"):
        profile_model(ir, ProfileOptions(k_min=3), show_progress=False)
