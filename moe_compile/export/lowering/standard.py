"""GroupedMoE in standard ONNX ops only (opset 18), so that any runtime runs it.

The formulation is the one that is fastest for few tokens (decode): each token gathers the
weights of its k chosen experts and multiplies them with its own hidden vector,

    W_gate_up[experts] [T, k, 2I, H] @ x [T, 1, H, 1] -> [T, k, 2I]   (gate | up)
    W_down[experts]    [T, k, H, I]  @ h [T, k, I, 1] -> [T, k, H]    (then weight and sum over k)

which reads exactly the k chosen experts per token, as a fused kernel would. Its cost: the
gathered weights are materialised, T * k * 3 * H * I elements, so for long prompts it moves
T*k/E times more bytes than a dense pass over all experts would; the ONNX Runtime target
(com.microsoft.MoE) or the TensorRT plugin is the choice for prefill-heavy serving.
"""

from __future__ import annotations

import math

from onnxscript import opset18 as op

from moe_compile.grouped_moe_op import GroupedMoEAttributes

FLOAT = 1  # onnx.TensorProto.FLOAT


def ints(*values: int):
    return op.Constant(value_ints=list(values))


def _scalar(value: float):
    return op.Constant(value_float=float(value))


def _group_limited(choice, attrs: GroupedMoEAttributes, num_experts_per_group: int):
    """choice [T, E] -> the same with experts outside the best topk_group groups at -inf."""
    grouped = op.Reshape(choice, ints(0, attrs.n_group, num_experts_per_group))  # [T, G, E/G]
    if attrs.group_scoring == "max":
        group_score = op.ReduceMax(grouped, ints(-1), keepdims=0)  # [T, G]
    else:  # sum_top2
        best_two, _ = op.TopK(grouped, ints(min(2, num_experts_per_group)), axis=-1, largest=1, sorted=1)
        group_score = op.ReduceSum(best_two, ints(-1), keepdims=0)
    _, keep = op.TopK(group_score, ints(attrs.topk_group), axis=-1, largest=1, sorted=1)  # [T, topk_group]
    ones = op.Expand(op.Constant(value_int=1), op.Shape(keep))
    mask = op.ScatterElements(op.ConstantOfShape(op.Shape(group_score)), keep, op.Cast(ones, to=FLOAT), axis=1)
    mask = op.Expand(op.Unsqueeze(mask, ints(-1)), op.Shape(grouped))  # [T, G, E/G]
    mask = op.Reshape(mask, op.Shape(choice))  # [T, E]
    return op.Where(op.Cast(mask, to=9), choice, _scalar(-math.inf))  # 9: BOOL


def _activate(gate, up, attrs: GroupedMoEAttributes):
    if attrs.activation == "silu_glu":
        return op.Mul(op.Mul(gate, op.Sigmoid(gate)), up)
    if attrs.activation == "gelu_glu":
        erf = op.Erf(op.Div(gate, op.CastLike(_scalar(math.sqrt(2.0)), gate)))
        return op.Mul(op.Mul(op.Mul(gate, op.CastLike(_scalar(0.5), gate)), op.Add(erf, op.CastLike(_scalar(1.0), gate))), up)
    if attrs.activation == "gelu_tanh_glu":
        cube = op.Mul(op.Mul(gate, gate), gate)
        inner = op.Mul(op.CastLike(_scalar(math.sqrt(2.0 / math.pi)), gate),
                       op.Add(gate, op.Mul(op.CastLike(_scalar(0.044715), gate), cube)))
        half = op.Mul(op.CastLike(_scalar(0.5), gate), gate)
        return op.Mul(op.Mul(half, op.Add(op.CastLike(_scalar(1.0), gate), op.Tanh(inner))), up)
    limit = op.CastLike(_scalar(attrs.swiglu_limit), gate)  # swiglu_clamp
    gate = op.Min(gate, limit)
    up = op.Max(op.Min(up, limit), op.Neg(limit))
    glu = op.Mul(gate, op.Sigmoid(op.Mul(gate, op.CastLike(_scalar(attrs.swiglu_alpha), gate))))
    return op.Mul(glu, op.Add(up, op.CastLike(_scalar(1.0), up)))


def poison_nonfinite_tokens(out, hidden, router_logits):
    """out [T, H] with the rows of tokens that have a NaN or an infinity in their hidden or
    router-logit row set to NaN: the op's rule for non-finite inputs (reference.py).

    x * 0 is 0 for a finite x and NaN for NaN or ±inf, so a row sum of it is NaN exactly
    when the row holds a non-finite value (in fp32, so that a large fp16 row cannot overflow).
    """
    def nonfinite(x):  # [T, N] -> [T, 1] bool
        return op.IsNaN(op.ReduceSum(op.Mul(op.Cast(x, to=FLOAT), _scalar(0.0)), ints(-1), keepdims=1))

    bad = op.Or(nonfinite(hidden), nonfinite(router_logits))  # [T, 1]
    return op.Where(bad, op.CastLike(_scalar(math.nan), out), out)


def route(router_logits, score_bias, attrs: GroupedMoEAttributes, num_experts: int):
    """-> (weights [T, k] fp32, experts [T, k] int64), as reference.route."""
    logits = op.Cast(router_logits, to=FLOAT)
    scores = op.Softmax(logits, axis=-1) if attrs.scoring == "softmax" else op.Sigmoid(logits)  # [T, E]
    choice = scores if score_bias is None else op.Add(scores, op.Cast(score_bias, to=FLOAT))
    if attrs.group_limited:
        choice = _group_limited(choice, attrs, num_experts // attrs.n_group)
    _, experts = op.TopK(choice, ints(attrs.top_k), axis=-1, largest=1, sorted=1)  # ties: lower index first
    weights = op.GatherElements(scores, experts, axis=1)  # [T, k]
    if attrs.normalize_topk:
        weights = op.Div(weights, op.Add(op.ReduceSum(weights, ints(-1), keepdims=1), _scalar(1e-20)))
    if attrs.routed_scaling != 1.0:
        weights = op.Mul(weights, _scalar(attrs.routed_scaling))
    return weights, experts


def grouped_moe_standard(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias,
                         attrs: GroupedMoEAttributes, num_experts: int):
    weights, experts = route(router_logits, score_bias, attrs, num_experts)
    gate_up = op.MatMul(op.Gather(w_gate_up, experts, axis=0), op.Unsqueeze(hidden, ints(1, 3)))  # [T, k, 2I, 1]
    gate_up = op.Squeeze(gate_up, ints(3))  # [T, k, 2I]
    if b_gate_up is not None:
        gate_up = op.Add(gate_up, op.Gather(b_gate_up, experts, axis=0))
    gate, up = op.Split(gate_up, axis=-1, num_outputs=2)
    h = _activate(gate, up, attrs)  # [T, k, I]
    y = op.Squeeze(op.MatMul(op.Gather(w_down, experts, axis=0), op.Unsqueeze(h, ints(3))), ints(3))  # [T, k, H]
    if b_down is not None:
        y = op.Add(y, op.Gather(b_down, experts, axis=0))
    weighted = op.Mul(op.Cast(y, to=FLOAT), op.Unsqueeze(weights, ints(2)))  # fp32 combine
    out = op.CastLike(op.ReduceSum(weighted, ints(1), keepdims=0), hidden)  # [T, H]
    return poison_nonfinite_tokens(out, hidden, router_logits)


def lower_to_standard_ops(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *,
                          attrs: GroupedMoEAttributes, lowering):
    return grouped_moe_standard(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, attrs,
                                num_experts=w_gate_up.shape[0])
