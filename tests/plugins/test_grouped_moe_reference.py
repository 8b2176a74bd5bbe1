"""The GroupedMoE op's semantics, checked against independent formulations and by hand."""

import pytest
import torch
import torch.nn.functional as F

from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import GroupedMoEAttributes, call_grouped_moe, grouped_moe_reference, route
from moe_compile.grouped_moe_op.reference import activate


def _weights(experts=6, hidden=10, inter=7, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    w = dict(w_gate_up=torch.randn(experts, 2 * inter, hidden, generator=g) / hidden ** 0.5,
             w_down=torch.randn(experts, hidden, inter, generator=g) / inter ** 0.5)
    if bias:
        w.update(b_gate_up=torch.randn(experts, 2 * inter, generator=g), b_down=torch.randn(experts, hidden, generator=g))
    return w


def _dense_moe(hidden, logits, w_gate_up, w_down, attrs, b_gate_up=None, b_down=None, score_bias=None):
    """Every expert on every token, weighted by a dense [T, E] routing matrix: no gather at all."""
    weights, experts = route(logits, attrs, score_bias)
    dense = torch.zeros(logits.shape).scatter_add_(1, experts, weights)  # [T, E]
    out = torch.zeros_like(hidden)
    for e in range(w_gate_up.shape[0]):
        gu = hidden @ w_gate_up[e].T + (0 if b_gate_up is None else b_gate_up[e])
        y = activate(gu, attrs) @ w_down[e].T + (0 if b_down is None else b_down[e])
        out += dense[:, e : e + 1] * y
    return out


@pytest.mark.parametrize("attrs", [
    GroupedMoEAttributes(top_k=2),
    GroupedMoEAttributes(top_k=6, normalize_topk=True),
    GroupedMoEAttributes(top_k=1, scoring="sigmoid", routed_scaling=2.5),
    GroupedMoEAttributes(top_k=3, activation="gelu_glu", normalize_topk=True),
    GroupedMoEAttributes(top_k=3, activation="gelu_tanh_glu"),
    GroupedMoEAttributes(top_k=2, activation="swiglu_clamp", swiglu_limit=0.5, normalize_topk=True),
    GroupedMoEAttributes(top_k=2, n_group=3, topk_group=1, group_scoring="max", routed_scaling=1.5),
    GroupedMoEAttributes(top_k=3, scoring="sigmoid", n_group=3, topk_group=2, group_scoring="sum_top2",
                         normalize_topk=True),
])
@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_reference_equals_dense_formulation(attrs, tokens):
    g = torch.Generator().manual_seed(tokens)
    w = _weights(bias=attrs.activation == "swiglu_clamp")
    hidden, logits = torch.randn(tokens, 10, generator=g), torch.randn(tokens, 6, generator=g)
    score_bias = torch.randn(6, generator=g) * 0.2 if attrs.scoring == "sigmoid" else None
    got = grouped_moe_reference(hidden, logits, attrs=attrs, score_bias=score_bias, **w)
    torch.testing.assert_close(got, _dense_moe(hidden, logits, attrs=attrs, score_bias=score_bias, **w),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call_grouped_moe(hidden, logits, attrs=attrs, score_bias=score_bias, **w), got,
                               rtol=0, atol=0)


def test_ties_break_toward_the_lower_expert_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    _, experts = route(logits, GroupedMoEAttributes(top_k=3))
    assert experts.tolist() == [[1, 2, 4], [0, 1, 2]]


def test_group_limited_routing_by_hand():
    # 4 experts in 2 groups. Scores: group 0 = {0.1, 0.5}, group 1 = {0.3, 0.35}.
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.35]])
    logits = torch.logit(scores)
    by_max = GroupedMoEAttributes(top_k=2, scoring="sigmoid", n_group=2, topk_group=1, group_scoring="max")
    by_top2 = GroupedMoEAttributes(top_k=2, scoring="sigmoid", n_group=2, topk_group=1, group_scoring="sum_top2")
    assert route(logits, by_max)[1].tolist() == [[1, 0]]  # group 0 wins on its best expert (0.5)
    assert route(logits, by_top2)[1].tolist() == [[3, 2]]  # group 1 wins on its sum (0.65 > 0.6)
    # The score-correction bias steers the choice but not the weights.
    weights, experts = route(logits, by_max, score_bias=torch.tensor([0.0, 0.0, 0.5, 0.0]))
    assert experts.tolist() == [[2, 3]]
    torch.testing.assert_close(weights, torch.tensor([[0.3, 0.35]]))


def test_weights_normalisation_and_scaling():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))  # softmax gives back these probabilities
    weights, experts = route(logits, GroupedMoEAttributes(top_k=2, routed_scaling=2.0))
    assert experts.tolist() == [[3, 2]]
    torch.testing.assert_close(weights, torch.tensor([[0.8, 0.6]]))
    weights, _ = route(logits, GroupedMoEAttributes(top_k=2, normalize_topk=True, routed_scaling=2.0))
    torch.testing.assert_close(weights, torch.tensor([[0.4, 0.3]]) / 0.7 * 2.0)


def test_swiglu_clamp_by_hand():
    attrs = GroupedMoEAttributes(top_k=1, activation="swiglu_clamp", swiglu_alpha=1.702, swiglu_limit=7.0)
    gate_up = torch.tensor([[9.0, -1.0, 10.0, -10.0]])  # gate (9, -1), up (10, -10)
    gate, up = torch.tensor([7.0, -1.0]), torch.tensor([7.0, -7.0])
    torch.testing.assert_close(activate(gate_up, attrs)[0], gate * torch.sigmoid(1.702 * gate) * (up + 1))


def test_all_tokens_to_one_expert_and_empty_experts():
    w = _weights()
    hidden = torch.randn(9, 10)
    logits = torch.zeros(9, 6)
    logits[:, 4] = 10.0
    attrs = GroupedMoEAttributes(top_k=1)
    expected = F.softmax(logits, -1)[:, 4:5] * (F.silu(hidden @ w["w_gate_up"][4, :7].T) * (hidden @ w["w_gate_up"][4, 7:].T)) @ w["w_down"][4].T
    torch.testing.assert_close(grouped_moe_reference(hidden, logits, attrs=attrs, **w), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_fp32(dtype):
    w = _weights()
    hidden, logits = torch.randn(16, 10), torch.randn(16, 6)
    attrs = GroupedMoEAttributes(top_k=3)
    exact = grouped_moe_reference(hidden, logits, attrs=attrs, **w)
    low = grouped_moe_reference(hidden.to(dtype), logits, attrs=attrs, **{k: v.to(dtype) for k, v in w.items()})
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), exact, rtol=5e-2, atol=5e-2)


def test_fake_kernel_lets_torch_export_see_one_opaque_op():
    w = _weights()
    attrs = GroupedMoEAttributes(top_k=2)

    class Block(torch.nn.Module):
        def forward(self, hidden, logits):
            return call_grouped_moe(hidden, logits, w["w_gate_up"], w["w_down"], attrs)

    program = torch.export.export(Block(), (torch.randn(5, 10), torch.randn(5, 6)),
                                  dynamic_shapes=({0: torch.export.Dim("tokens")}, {0: torch.export.Dim("tokens")}))
    calls = [n for n in program.graph.nodes if n.target is torch.ops.moe_compile.grouped_moe.default]
    assert len(calls) == 1
    assert calls[0].args[7] == 2  # top_k is carried as a static attribute
    hidden = torch.randn(11, 10)
    logits = torch.randn(11, 6)
    torch.testing.assert_close(program.module()(hidden, logits), Block()(hidden, logits))


@pytest.mark.parametrize("attrs, message", [
    (GroupedMoEAttributes(top_k=0), "top_k=0 is outside 1..6"),
    (GroupedMoEAttributes(top_k=7), "top_k=7 is outside 1..6"),
    (GroupedMoEAttributes(top_k=5, n_group=3, topk_group=2), "outside 1..4 (group-limited"),
    (GroupedMoEAttributes(top_k=1, n_group=4), "does not divide"),
    (GroupedMoEAttributes(top_k=1, scoring="relu"), "scoring 'relu'"),
    (GroupedMoEAttributes(top_k=1, activation="relu"), "activation 'relu'"),
])
def test_invalid_attributes_are_refused(attrs, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(".", r"\.")):
        attrs.validate(6)
