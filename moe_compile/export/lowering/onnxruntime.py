"""The ONNX Runtime target: GroupedMoE as `com.microsoft.MoE` where ONNX Runtime can express it.

Its contract (ONNX Runtime 1.32): `router_probs` are logits (it applies the softmax), `k` is
the static top-k, `normalize_routing_weights` renormalises the top-k, and the activation is
SwiGLU: G = clamp(g, max=limit), L = clamp(l, -limit, limit), G * sigmoid(alpha * G) * (L + beta)
(silu_glu: alpha 1, beta 0, no limit; gpt-oss' swiglu_clamp: its alpha, beta 1, its limit).
fc1 is [E, 2I, H] with gate and up rows *interleaved* (swiglu_fusion=1, the only layout its
CPU kernel takes), fc2 is [E, H, I].

Its CPU kernel ranks experts with `std::partial_sort(..., std::greater<>())` over (probability,
index) pairs, so equal probabilities go to the *higher* expert index, where our contract says
the lower. The lowering therefore hands the node its experts in reverse order (router logits
reversed by a Gather, weights reversed in the file), which turns its tie rule into ours.
`prepare_ort_moe_weights` rewrites the weights after export (interleave, reverse).

Its CPU kernel gives each thread a contiguous range of expert indices and runs an expert's
products on one thread: with 4 of 16 experts chosen, one of two threads gets 3 or 4 of them for
57 % of tokens. Where the node runs every token count (fp32, `export --moe-prompts node`), each
expert is therefore handed to it as two experts (the default's few-token node gets the same from
the file's whole experts when the session starts: sorted_experts.py), the halves of its intermediate channels (an
expert's SwiGLU MLP is the sum of the same MLP over any partition of its channels), laid out
slice-major (the first halves of all experts, then the second halves), so each thread runs one
half of every chosen expert (decode steps measured in docs/export.md). The node then takes 2k of
2E experts, and the choice is made outside it (`selecting_logits`, given twice), because its own
would split tied experts: at equal probabilities its (probability, index) order takes the second
halves of the tied experts before any first half. fc2's bias is on the first half (zeros on the
second), so it is added once.

The kernel also turns a token with NaN probabilities into zeros; the op's rule for non-finite
inputs (a NaN output row) is restored around the node (`standard.poison_nonfinite_tokens`).

Routing it cannot express (sigmoid scores, score-correction bias, group-limited routing,
routed scaling: DeepSeek-V2/V3) is done in standard ops and handed to the node as logits that
select exactly the chosen experts (`selecting_logits`), so the experts still run in the node
and memory does not grow with tokens·k·expert size. A GELU-gated layer cannot run in the node
and is lowered to standard ops; `choose_lowering` decides both, the report and `inspect` say so.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import onnxscript
import torch
from onnxscript import opset18 as op

from moe_compile.grouped_moe_op import GroupedMoEAttributes

from .ort_support import EXPERT_SLICES, MS_DOMAIN, SMALLEST_WEIGHT, expert_slices
from .standard import FLOAT, grouped_moe_standard, ints, poison_nonfinite_tokens, route

_FC1_INPUTS = (2, 3)  # fc1_experts_weights, fc1_experts_bias
_FC2_INPUTS = (4, 5)  # fc2_experts_weights, fc2_experts_bias


@functools.cache
def register_ms_schema(name: str = "MoE", domain: str = MS_DOMAIN) -> None:
    """onnxscript and onnx.checker need the schema of ONNX Runtime's contrib op `name` (MoE, QMoE,
    MatMulNBits; the fused ops of export/ort_fusions.py, one of which, SimplifiedLayerNormalization,
    ONNX Runtime puts in the default domain): copy ONNX Runtime's own."""
    from onnx.defs import OpSchema, has, register_schema
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_schemas

    if has(name, domain):
        return
    ort = next(s for s in ort_schemas.get_all_operator_schema() if s.name == name and s.domain == domain)
    option = {"Single": OpSchema.FormalParameterOption.Single, "Optional": OpSchema.FormalParameterOption.Optional,
              "Variadic": OpSchema.FormalParameterOption.Variadic}

    def parameters(formal):
        return [OpSchema.FormalParameter(p.name, p.typeStr, param_option=option[p.option.name]) for p in formal]

    attr_type = {kind: getattr(OpSchema.AttrType, kind) for kind in ("INT", "FLOAT", "STRING")}
    register_schema(OpSchema(
        name, domain, ort.since_version, inputs=parameters(ort.inputs), outputs=parameters(ort.outputs),
        type_constraints=[(t.type_param_str, list(t.allowed_type_strs), "") for t in ort.type_constraints],
        attributes=[OpSchema.Attribute(attr, attr_type[a.type.name], "", required=False)
                    for attr, a in ort.attributes.items()]))


def selecting_logits(router_logits, score_bias, attrs: GroupedMoEAttributes, num_experts: int):
    """Routing of any kind in standard ops, handed to com.microsoft.MoE through its softmax.

    -> (logits [T, E] fp32, total [T, 1] fp32): logits are log(w_j) at the chosen experts and
    -inf elsewhere, so the node's softmax is w_j / Σw on exactly the k chosen experts (its top-k
    then picks them, whatever their order) and 0 on all others; out · Σw is then Σ w_j·y_j, the
    op's output with its own weights (sigmoid, bias-steered choice, groups, scaling included).
    Memory: [T, E] and [T, k] beside the node, independent of the experts' size.
    """
    weights, experts = route(router_logits, score_bias, attrs, num_experts)  # [T, k] fp32, [T, k]
    total = op.ReduceSum(weights, ints(-1), keepdims=1)  # [T, 1]
    log_weights = op.Log(op.Max(weights, op.Constant(value_float=SMALLEST_WEIGHT)))  # [T, k], finite
    unchosen = op.Expand(op.Constant(value_float=-math.inf), op.Shape(router_logits))  # [T, E]
    return op.ScatterElements(unchosen, experts, log_weights, axis=1), total


def lower_to_ort_moe(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *,
                     attrs: GroupedMoEAttributes, lowering):
    num_experts = w_gate_up.shape[0]
    if lowering.lowered_to == "standard":
        return grouped_moe_standard(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, attrs,
                                    num_experts=num_experts)
    register_ms_schema("MoE")
    slices = EXPERT_SLICES if lowering.expert_halves else 1  # the file's experts: slices x E
    routed_outside = lowering.routing == "standard ops"  # always with halves: choose_lowering
    if routed_outside:
        logits, total = selecting_logits(router_logits, score_bias, attrs, num_experts)
        logits = op.CastLike(logits, hidden)
    else:
        logits = router_logits
    clamped = attrs.activation == "swiglu_clamp"
    limit = {"swiglu_limit": attrs.swiglu_limit} if clamped else {}
    reversed_logits = op.Gather(logits, ints(*range(num_experts - 1, -1, -1)), axis=1)  # [T, E], E-1 first
    if slices > 1:
        reversed_logits = op.Concat(*[reversed_logits] * slices, axis=1)  # [T, slices·E], each expert's slices alike
    normalize = attrs.normalize_topk and not routed_outside  # routed outside: the softmax already is w / Σw
    out = onnxscript.values.Opset(MS_DOMAIN, 1).MoE(
        hidden, reversed_logits, w_gate_up, b_gate_up, w_down, b_down,
        k=attrs.top_k * slices, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=int(normalize),
        activation_alpha=attrs.swiglu_alpha if clamped else 1.0, activation_beta=1.0 if clamped else 0.0, **limit)
    if routed_outside:  # each chosen slice weighed w_j / (slices·Σw)
        scale = total if slices == 1 else op.Mul(total, op.Constant(value_float=float(slices)))
        out = op.CastLike(op.Mul(op.Cast(out, to=FLOAT), scale), hidden)  # [T, H], Σ w_j·y_j
    return poison_nonfinite_tokens(out, hidden, router_logits)


def ort_expert_layouts(nodes, shapes: dict[str, tuple[int, ...]], halves: bool = False) -> dict:
    """The expert weight inputs of every com.microsoft.MoE among `nodes` ((domain, op_type, input
    names) each) -> {initializer name: its OrtExpertLayout}; a node's slices from its fc2's
    intermediate size (`shapes`: the initializers' shapes as traced) where `halves`."""
    found = {}
    for domain, op_type, inputs in nodes:
        if domain != MS_DOMAIN or op_type != "MoE":
            continue
        slices = expert_slices(halves, shapes.get(inputs[_FC2_INPUTS[0]], (1,))[-1])  # fc2 [E, H, I]
        for position in _FC1_INPUTS + _FC2_INPUTS:
            name = inputs[position] if position < len(inputs) else ""
            if name:
                found[name] = OrtExpertLayout(position in _FC1_INPUTS, slices)
    return found


def ort_expert_layout(weights: torch.Tensor, fc1: bool, slices: int = 1) -> Iterator[torch.Tensor]:
    """An expert tensor [E, ...] in com.microsoft.MoE's layout, one expert at a time: experts in
    reverse order (see the module docstring), fc1's [gate rows; up rows] as g0 u0 g1 u1 ...; with
    `slices` > 1, each expert cut into that many runs of its intermediate channels, slice-major
    (fc1's rows and bias, fc2's columns; fc2's bias on the first slice, zeros on the others)."""
    for part in range(slices):
        for expert in range(weights.shape[0] - 1, -1, -1):
            rows = weights[expert]  # [2I, H] or [2I] (fc1), [H, I] or [H] (fc2)
            if fc1:
                half = rows.shape[0] // 2
                rows = torch.stack([rows[:half], rows[half:]], dim=1).reshape(rows.shape)
                width = rows.shape[0] // slices
                yield rows[part * width:(part + 1) * width]
            elif rows.dim() == 2:
                width = rows.shape[1] // slices
                yield rows[:, part * width:(part + 1) * width]
            else:
                yield rows if part == 0 else torch.zeros_like(rows)


@dataclass(frozen=True)
class OrtExpertLayout:
    """`ort_expert_layout` for fc1 or fc2 tensors: equal for the same kind and slices, so that a
    streamed export can tell a tensor written before its graph existed (export/early_experts.py)
    is the one an initializer of the graph needs."""

    fc1: bool
    slices: int = 1

    def __call__(self, weights: torch.Tensor) -> Iterator[torch.Tensor]:
        return ort_expert_layout(weights, self.fc1, self.slices)

    def laid_out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """[E, ...] -> the shape once laid out: [slices·E, ...], the sliced axis (fc1's rows, fc2's
        columns) divided by slices."""
        experts, *rest = shape
        if self.fc1:
            rest[0] //= self.slices
        elif len(rest) == 2:
            rest[1] //= self.slices
        return (experts * self.slices, *rest)


# com.microsoft.MoE's expert inputs by ExpertWeights field: fc1 (True) or fc2
ORT_EXPERT_FIELDS = {"gate_up": True, "gate_up_bias": True, "down": False, "down_bias": False}


def prepare_ort_moe_weights(onnx_model, halves: bool = False) -> None:
    """In every com.microsoft.MoE: the expert weights in `ort_expert_layout` (in place), cut in
    halves where `halves` (an export that asked, `LoweringReport.expert_halves`)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in onnx_model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    nodes = [(node.domain, node.op_type, list(node.input)) for node in onnx_model.graph.node]
    shapes = {name: tuple(init.dims) for name, init in initializers.items()}
    layouts = ort_expert_layouts(nodes, shapes, halves)
    for name, layout in layouts.items():
        if name not in initializers or consumers[name] != 1:
            raise RuntimeError(f"expert input '{name}' of a com.microsoft.MoE node is not an initializer of its own")
        array = numpy_helper.to_array(initializers[name])
        bits = torch.from_numpy(array.copy().view(f"i{array.itemsize}"))  # data movement only: any dtype
        laid_out = torch.stack(list(layout(bits))).numpy().view(array.dtype)
        initializers[name].CopyFrom(numpy_helper.from_array(laid_out, name))
    # the trace's shapes of those tensors, where it recorded them, are the shapes before the layout
    kept = [info for info in onnx_model.graph.value_info if info.name not in layouts]
    del onnx_model.graph.value_info[:]
    onnx_model.graph.value_info.extend(kept)
