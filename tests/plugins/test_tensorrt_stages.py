"""The six TensorRT plugin stages (plugins/tensorrt/stages.py) without TensorRT.

The stages run in order on CPU tensors in Triton's interpreter, each kernel getting its inputs,
ints and outputs in the order TensorRT passes them, with tensor shapes from the stage
description evaluated for the actual T; the result must match the reference. The description
must also agree with the Python launcher (the single source of launch arguments) and with the
kernels' parameter lists, and its sizes must be the same expressions symbolically and in ints.
"""

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference
from moe_compile.plugins.grouped_moe import kernels
from moe_compile.plugins.grouped_moe.aot import record_launches
from moe_compile.plugins.grouped_moe.configs import KernelConfig
from moe_compile.plugins.grouped_moe.launcher import allocate, experts_and_combine, launch_plan, route_and_align
from moe_compile.plugins.tensorrt.pipeline import run_stages, triton_launch
from moe_compile.plugins.tensorrt.stages import STAGES, StageLayer
from moe_compile.plugins.tensorrt.symbolic import SYM_OPS, Sym, evaluate

SMALL = KernelConfig(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 4e-2}


def make_inputs(tokens, experts, hidden=40, inter=24, dtype=torch.float32, bias=False, score_bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {"hidden": torch.randn(tokens, hidden, generator=g), "router_logits": torch.randn(tokens, experts, generator=g),
         "w_gate_up": torch.randn(experts, 2 * inter, hidden, generator=g) / hidden ** 0.5,
         "w_down": torch.randn(experts, hidden, inter, generator=g) / inter ** 0.5}
    if bias:
        x.update(b_gate_up=torch.randn(experts, 2 * inter, generator=g),
                 b_down=torch.randn(experts, hidden, generator=g))
    if score_bias:
        x["score_bias"] = torch.randn(experts, generator=g) * 0.3
    return {name: t.to(dtype) for name, t in x.items()}


def layer_for(inputs, attrs, block_m=16):
    experts, two_inter, hidden = inputs["w_gate_up"].shape
    return StageLayer(attrs, experts, hidden, two_inter // 2, block_m, has_score_bias="score_bias" in inputs,
                      has_gate_up_bias="b_gate_up" in inputs, has_down_bias="b_down" in inputs)


VARIANTS = {
    "softmax": (GroupedMoEAttributes(top_k=2), {}),
    "sigmoid-score-bias-normalised-scaled": (
        GroupedMoEAttributes(top_k=3, scoring="sigmoid", normalize_topk=True, routed_scaling=2.5),
        {"score_bias": True}),
    "group-limited-sum-top2": (
        GroupedMoEAttributes(top_k=4, scoring="sigmoid", normalize_topk=True, n_group=4, topk_group=2,
                             group_scoring="sum_top2"), {"score_bias": True}),
    "biases-swiglu-clamp": (GroupedMoEAttributes(top_k=2, activation="swiglu_clamp", swiglu_limit=0.7,
                                                 swiglu_alpha=1.3), {"bias": True}),
}


@pytest.mark.parametrize("tokens", [1, 3, 50])  # 50 > one chunk of 16 route tokens at E = 16
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_six_stages_in_order_match_the_reference(variant, tokens):
    attrs, options = VARIANTS[variant]
    inputs = make_inputs(tokens, 16, seed=tokens, **options)
    layer = layer_for(inputs, attrs)
    assert layer.plan(tokens, SMALL).chunks == (1 if tokens <= 16 else 4)
    got = run_stages(layer, inputs, triton_launch, gemm_config=SMALL)
    want = grouped_moe_reference(**inputs, attrs=attrs)
    torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE[torch.float32] * want.abs().max().item())


def test_nonfinite_rows_are_nan_and_leave_the_others(bf16_dot_in_interpreter):
    attrs = GroupedMoEAttributes(top_k=2, normalize_topk=True)
    inputs = make_inputs(40, 8, dtype=torch.bfloat16, seed=5)
    inputs["hidden"][3, 7] = float("nan")
    inputs["hidden"][11, 0] = float("-inf")
    inputs["router_logits"][20, 5] = float("inf")
    inputs["router_logits"][30] = float("nan")
    got = run_stages(layer_for(inputs, attrs), inputs, triton_launch, gemm_config=SMALL)
    want = grouped_moe_reference(**inputs, attrs=attrs)
    poisoned = [3, 11, 20, 30]
    assert got[poisoned].isnan().all() and not got[[t for t in range(40) if t not in poisoned]].isnan().any()
    torch.testing.assert_close(got.float().nan_to_num(), want.float().nan_to_num(), rtol=0,
                               atol=TOLERANCE[torch.bfloat16] * want.float().nan_to_num().abs().max().item())


@pytest.mark.parametrize("tokens", [5, 50])
def test_stages_launch_what_the_launcher_launches(tokens):
    """Same kernels, grids, ints, constexprs and options as the Python launcher's multi-chunk path,
    and tensors of the same shapes and dtypes in the same places."""
    attrs, options = VARIANTS["group-limited-sum-top2"]
    inputs = make_inputs(tokens, 16, bias=True, **options)
    layer = layer_for(inputs, attrs)
    plan = dataclasses.replace(launch_plan(inputs["hidden"], inputs["w_gate_up"], attrs, SMALL), decode_shortcut=False)
    out = torch.empty_like(inputs["hidden"])
    with record_launches() as launches:
        buf = allocate(plan, torch.float32, torch.device("cpu"))
        route_and_align(inputs["hidden"], inputs["router_logits"], attrs, plan, buf, inputs["score_bias"])
        experts_and_combine(inputs["hidden"], inputs["w_gate_up"], inputs["w_down"], inputs["b_gate_up"],
                            inputs["b_down"], attrs, plan, buf, out)
    assert [launch.name for launch in launches] == [stage.kernel for stage in STAGES]
    for stage, recorded in zip(STAGES, launches, strict=True):
        launch = layer.launch(stage, tokens, fp32=True, config=SMALL)
        assert recorded.grid == launch.grid and recorded.constexprs == launch.constexprs
        assert recorded.options == launch.options
        args = list(recorded.args.values())
        ints = args[len(launch.inputs):len(launch.inputs) + len(launch.ints)]
        assert dict(zip(launch.ints, ints, strict=True)) == launch.ints
        pointers = args[:len(launch.inputs)] + args[len(launch.inputs) + len(launch.ints):][:len(launch.outputs)]
        for tensor, (name, (shape, dtype)) in zip(pointers, [*launch.inputs.items(), *launch.outputs.items()],
                                                  strict=True):
            if name not in ("b_gate_up", "b_down", "score_bias") or tensor.numel() > 1:
                assert tuple(tensor.shape) == shape, (stage.plugin, name)
            assert str(tensor.dtype).removeprefix("torch.") == {"act": "float32"}.get(dtype, dtype), name


def test_kernel_parameters_are_inputs_ints_outputs_then_the_rest():
    layer = StageLayer(GroupedMoEAttributes(top_k=2), experts=8, hidden=40, inter=24, block_m=16)
    for stage in STAGES:
        launch = layer.launch(stage, 7, fp32=True)
        names = getattr(kernels, stage.kernel).arg_names
        n_in, n_int, n_out = len(launch.inputs), len(launch.ints), len(launch.outputs)
        assert all(name.endswith("_ptr") for name in names[:n_in] + names[n_in + n_int:n_in + n_int + n_out])
        assert tuple(names[n_in:n_in + n_int]) == tuple(launch.ints), stage.plugin
        rest = names[n_in + n_int + n_out:]
        assert tuple(rest[:len(stage.unused)]) == stage.unused
        assert set(rest[len(stage.unused):]) == set(launch.constexprs), stage.plugin


def test_symbolic_sizes_equal_the_int_sizes():
    """Every shape, grid and int of every stage, built from a symbolic T, evaluates to the plan's
    ints for each T; and T recovers from each stage's token input (T * k // k for slot counts)."""
    attrs = GroupedMoEAttributes(top_k=6, n_group=4, topk_group=2)
    layer = StageLayer(attrs, experts=64, hidden=2048, inter=1408, block_m=64, has_gate_up_bias=True)
    config = KernelConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)
    for stage in STAGES:
        symbolic = layer.launch(stage, Sym.tokens(), fp32=False, config=config, ops=SYM_OPS)
        for tokens in (1, 2, 15, 16, 17, 64, 100, 1000, 4096, 10000):
            concrete = layer.launch(stage, tokens, fp32=False, config=config)
            assert tuple(evaluate(g, tokens) for g in symbolic.grid) == concrete.grid
            assert {n: evaluate(v, tokens) for n, v in symbolic.ints.items()} == concrete.ints
            for name, (shape, dtype) in {**symbolic.inputs, **symbolic.outputs}.items():
                assert (tuple(evaluate(d, tokens) for d in shape), dtype) == {**concrete.inputs,
                                                                             **concrete.outputs}[name]
            first = evaluate({**symbolic.inputs}[stage.token_input][0][0], tokens)
            assert layer.tokens(stage, first) == tokens


@pytest.mark.parametrize("block_m", [16, 32])
def test_gemm_stages_with_a_smaller_block_m_than_the_alignment(block_m):
    """The engine aligns each expert's rows for its largest BLOCK_M (64 here); a decode tactic
    runs the GEMMs with a smaller BLOCK_M dividing it, and row blocks of padding only do nothing."""
    attrs = GroupedMoEAttributes(top_k=2)
    inputs = make_inputs(20, 8, seed=21)
    layer = layer_for(inputs, attrs, block_m=64)
    config = KernelConfig(BLOCK_M=block_m, BLOCK_N=16, BLOCK_K=16)
    plan = layer.plan(20, config)
    assert plan.alignment == 64 and plan.max_blocks < plan.gemm_blocks <= plan.max_blocks * (64 // block_m)
    got = run_stages(layer, inputs, triton_launch, gemm_config=config)
    want = grouped_moe_reference(**inputs, attrs=attrs)
    torch.testing.assert_close(got, want, rtol=0, atol=TOLERANCE[torch.float32] * want.abs().max().item())


def test_tactics_offer_every_default_block_m_that_divides_the_alignment():
    layer = StageLayer(GroupedMoEAttributes(top_k=4), experts=60, hidden=2048, inter=1408, block_m=64)
    assert {c.BLOCK_M for c in layer.gemm_configs()} == {16, 32, 64}
    with pytest.raises(Exception, match="does not divide"):
        layer.config(KernelConfig(BLOCK_M=128, BLOCK_N=16, BLOCK_K=16))
