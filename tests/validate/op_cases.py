"""Hypothesis strategy for GroupedMoE cases: every attribute, shape and routing pattern the op
takes, with inputs made from a drawn seed (drawing tensors element by element is slow and
shrinks no better).

Router logits lie on a grid of quarters, so two experts either tie exactly (the contract's
rule decides: the lower index) or differ by far more than any implementation's round-off;
the fuzz looks for wrong routing, not for near-ties that a last-bit difference in exp() may
legitimately flip. For the same reason sigmoid logits feeding `sum_top2` group scores are
non-negative: sigmoid(x) + sigmoid(-x) is exactly 1 in real numbers but not in every
implementation's floats.
"""

import torch
from hypothesis import strategies as st

from moe_compile.grouped_moe_op import GroupedMoEAttributes
from moe_compile.grouped_moe_op.attributes import ACTIVATIONS, GROUP_SCORINGS
from moe_compile.validate.op_parity import OpCase

DTYPES = [torch.float32, torch.float32, torch.float16, torch.bfloat16]  # fp32 twice as often
ROUTING_PATTERNS = ["grid", "grid", "tied rows", "all to one expert", "unused experts"]
NONFINITE = [None] * 6 + ["nan hidden", "inf hidden", "-inf hidden", "nan logit", "inf logit", "-inf logit"]


@st.composite
def attributes(draw, experts: int) -> GroupedMoEAttributes:
    if draw(st.booleans()):  # what com.microsoft.MoE can express, so that its kernel runs often
        activation = draw(st.sampled_from(["silu_glu", "swiglu_clamp"]))
        return GroupedMoEAttributes(
            top_k=draw(st.integers(1, experts)), normalize_topk=draw(st.booleans()), activation=activation,
            swiglu_limit=draw(st.sampled_from([7.0, 0.5])))
    n_group = draw(st.sampled_from([g for g in range(1, experts + 1) if experts % g == 0]))
    topk_group = draw(st.integers(1, n_group))
    attrs = GroupedMoEAttributes(
        top_k=1, scoring=draw(st.sampled_from(["softmax", "sigmoid"])), normalize_topk=draw(st.booleans()),
        routed_scaling=draw(st.sampled_from([1.0, 0.5, 2.5, 16.0])), activation=draw(st.sampled_from(ACTIVATIONS)),
        swiglu_limit=draw(st.sampled_from([7.0, 0.5])), n_group=n_group, topk_group=topk_group,
        group_scoring=draw(st.sampled_from(GROUP_SCORINGS)))
    return attrs.with_top_k(draw(st.integers(1, attrs.eligible_experts(experts))))


def _logits(pattern: str, tokens: int, experts: int, low: int, g: torch.Generator) -> torch.Tensor:
    grid = torch.randint(low, 9, (tokens, experts), generator=g) / 4  # [T, E]
    if pattern == "tied rows":
        return grid[:, :1].expand(tokens, experts).clone()
    if pattern == "all to one expert":
        grid[:, torch.randint(experts, (1,), generator=g)] = 4.0
    elif pattern == "unused experts":
        unused = torch.rand(experts, generator=g) < 0.5
        grid[:, unused] = low / 4 - 2
    return grid


def _poison(case_tensors: dict, kind: str, g: torch.Generator) -> None:
    what, _, where = kind.partition(" ")
    tensor = case_tensors["hidden" if where == "hidden" else "router_logits"]
    tokens, width = tensor.shape
    for _ in range(1 + int(torch.randint(tokens, (1,), generator=g))):  # a few tokens, some twice
        tensor[torch.randint(tokens, (1,), generator=g), torch.randint(width, (1,), generator=g)] = float(what)


@st.composite
def op_cases(draw, max_tokens: int = 64) -> OpCase:
    experts = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 16]))
    attrs = draw(attributes(experts))
    tokens = draw(st.one_of(st.just(1), st.integers(1, 8), st.integers(1, max_tokens)))
    hidden, inter = draw(st.integers(1, 24)), draw(st.integers(1, 16))
    dtype = draw(st.sampled_from(DTYPES))
    biases = draw(st.booleans())
    score_bias = draw(st.booleans()) and attrs.scoring == "sigmoid"
    pattern = draw(st.sampled_from(ROUTING_PATTERNS))
    nonfinite = draw(st.sampled_from(NONFINITE))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    low = 0 if attrs.scoring == "sigmoid" and attrs.group_limited and attrs.group_scoring == "sum_top2" else -8
    tensors = {
        "hidden": torch.randn(tokens, hidden, generator=g),
        "router_logits": _logits(pattern, tokens, experts, low, g),
        "w_gate_up": torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5,
        "w_down": torch.randn(experts, hidden, inter, generator=g) / inter**0.5,
    }
    if biases:
        tensors["b_gate_up"] = torch.randn(experts, 2 * inter, generator=g) * 0.1
        tensors["b_down"] = torch.randn(experts, hidden, generator=g) * 0.1
    if nonfinite:
        _poison(tensors, nonfinite, g)
    tensors = {name: t.to(dtype) for name, t in tensors.items()}
    if score_bias:
        tensors["score_bias"] = torch.randint(-4, 5, (experts,), generator=g) / 8
    return OpCase(attrs, **tensors)
