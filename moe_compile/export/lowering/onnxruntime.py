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

The kernel also turns a token with NaN probabilities into zeros; the op's rule for non-finite
inputs (a NaN output row) is restored around the node (`standard.poison_nonfinite_tokens`).

A layer whose routing it cannot express (sigmoid scores, score-correction bias, group-limited
routing, routed scaling, a GELU gate) is lowered to standard ops instead; the report says why.
"""

from __future__ import annotations

import functools

import numpy as np
import onnxscript
from onnxscript import opset18 as op

from moe_compile.plugins.grouped_moe import GroupedMoEAttributes

from .standard import grouped_moe_standard, ints, poison_nonfinite_tokens

MS_DOMAIN = "com.microsoft"
_FC1_INPUTS = (2, 3)  # fc1_experts_weights, fc1_experts_bias
_FC2_INPUTS = (4, 5)  # fc2_experts_weights, fc2_experts_bias


def unsupported_reason(attrs: GroupedMoEAttributes, score_bias) -> str | None:
    if attrs.scoring != "softmax":
        return f"{attrs.scoring} scoring (com.microsoft.MoE applies a softmax)"
    if score_bias is not None:
        return "score-correction bias"
    if attrs.group_limited:
        return "group-limited routing"
    if attrs.routed_scaling != 1.0:
        return f"routed scaling {attrs.routed_scaling:g}"
    if attrs.activation not in ("silu_glu", "swiglu_clamp"):
        return f"{attrs.activation} experts (the CPU kernel runs SwiGLU only)"
    return None


@functools.cache
def register_ms_moe_schema() -> None:
    """onnxscript and onnx.checker need com.microsoft.MoE's schema: copy ONNX Runtime's own."""
    from onnx.defs import OpSchema, has, register_schema
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_schemas

    if has("MoE", MS_DOMAIN):
        return
    ort = next(s for s in ort_schemas.get_all_operator_schema() if s.name == "MoE" and s.domain == MS_DOMAIN)
    option = {"Single": OpSchema.FormalParameterOption.Single, "Optional": OpSchema.FormalParameterOption.Optional}

    def parameters(formal):
        return [OpSchema.FormalParameter(p.name, p.typeStr, param_option=option[p.option.name]) for p in formal]

    attr_type = {name: getattr(OpSchema.AttrType, name) for name in ("INT", "FLOAT", "STRING")}
    register_schema(OpSchema(
        "MoE", MS_DOMAIN, ort.since_version, inputs=parameters(ort.inputs), outputs=parameters(ort.outputs),
        type_constraints=[(t.type_param_str, list(t.allowed_type_strs), "") for t in ort.type_constraints],
        attributes=[OpSchema.Attribute(name, attr_type[a.type.name], "", required=False)
                    for name, a in ort.attributes.items()]))


def lower_to_ort_moe(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *,
                     attrs: GroupedMoEAttributes, report):
    reason = unsupported_reason(attrs, score_bias)
    if reason:
        report.add("standard", attrs, reason)
        return grouped_moe_standard(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, attrs,
                                    num_experts=w_gate_up.shape[0])
    register_ms_moe_schema()
    report.add("com.microsoft.MoE", attrs)
    clamped = attrs.activation == "swiglu_clamp"
    limit = {"swiglu_limit": attrs.swiglu_limit} if clamped else {}
    num_experts = w_gate_up.shape[0]
    reversed_logits = op.Gather(router_logits, ints(*range(num_experts - 1, -1, -1)), axis=1)  # [T, E], E-1 first
    out = onnxscript.values.Opset(MS_DOMAIN, 1).MoE(
        hidden, reversed_logits, w_gate_up, b_gate_up, w_down, b_down,
        k=attrs.top_k, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=int(attrs.normalize_topk),
        activation_alpha=attrs.swiglu_alpha if clamped else 1.0, activation_beta=1.0 if clamped else 0.0, **limit)
    return poison_nonfinite_tokens(out, hidden, router_logits)


def prepare_ort_moe_weights(onnx_model) -> None:
    """In every com.microsoft.MoE: experts in reverse order (see the module docstring), and fc1's
    [gate rows; up rows] -> g0 u0 g1 u1 ... (weights and bias)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in onnx_model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for node in onnx_model.graph.node:
        if node.domain != MS_DOMAIN or node.op_type != "MoE":
            continue
        for position in _FC1_INPUTS + _FC2_INPUTS:
            name = node.input[position] if position < len(node.input) else ""
            if not name:
                continue
            if name not in initializers or consumers[name] != 1:
                raise RuntimeError(f"expert input '{name}' of {node.name} is not an initializer of its own")
            array = numpy_helper.to_array(initializers[name])[::-1]  # [E, ...], expert E-1 first
            if position in _FC1_INPUTS:
                half = array.shape[1] // 2
                array = np.stack([array[:, :half], array[:, half:]], axis=2).reshape(array.shape)
            initializers[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))
