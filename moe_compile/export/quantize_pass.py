"""`export --quantize int8|int4`: the onnxruntime-target graph's weights quantized in place.

    com.microsoft.MoE (fp32 experts)  -> com.microsoft.QMoE: fc1/fc2 block-quantized, packed
                                          [E, N, K*bits/8] uint8 + scales [E, N, K/block]
    MatMul(x, W [K, N] constant)      -> com.microsoft.MatMulNBits (W^T block-quantized along K)
    Gemm(x, W [N, K], b, transB=1)    -> com.microsoft.MatMulNBits with b as its bias

The quantization itself is `moe_compile.quantization` (the same function gives validate its
dequantized reference). Left fp32: the routers (every MatMul/Gemm that feeds an MoE node's router
input), one-output projections, projections whose input size the block does not divide, and
weights shared by several nodes. QMoE's CPU kernel always renormalises the top-k weights, so a
layer whose routing does not renormalise was routed outside the node at export
(`choose_lowering(..., quantized=True)`), as DeepSeek-style routing is.

Both ops dequantize to fp32 before the product (accuracy_level 0) except QMoE's 8-bit CPU
experts, which ONNX Runtime 1.32 runs only with int8 activations (its schema: "Block-wise 8-bit
experts have no fp32 kernel"): an int8 file is therefore checked against its dequantized
reference with a wider tolerance (validate/tolerances.py), an int4 file with fp32's.

The pass runs on the onnx_ir graph and computes nothing: each replaced weight becomes two
initializers (export/quantized_weights.py) whose values are computed when they are written, slice
by slice, so a streamed export quantizes as it writes and an in-memory one as it serializes.
"""

from __future__ import annotations

from collections import deque

import onnx_ir as ir

from moe_compile.quantization.scheme import QuantScheme

from .lowering.onnxruntime import MS_DOMAIN, register_ms_schema
from .quantized_weights import quantized_pair

_MOE_ATTRS = ("k", "activation_type", "swiglu_fusion", "normalize_routing_weights", "activation_alpha",
              "activation_beta", "swiglu_limit")


def quantize_graph(graph: ir.Graph, scheme: QuantScheme) -> dict:
    """Quantize `graph`'s experts and dense projections in place; -> what was quantized."""
    for name in ("QMoE", "MatMulNBits"):
        register_ms_schema(name)
    routers = _router_outputs(graph)
    summary = {"scheme": scheme.metadata(), "experts": 0, "dense": 0, "dense_kept_fp32": 0}
    for node in list(graph):
        if node.domain == MS_DOMAIN and node.op_type == "MoE":
            _replace(graph, node, _qmoe(graph, node, scheme))
            summary["experts"] += 1
        elif node.op_type in ("MatMul", "Gemm") and not node.domain and node.outputs[0] not in routers:
            new = _matmul_nbits(graph, node, scheme)
            if new is not None:
                _replace(graph, node, new)
            summary["dense" if new is not None else "dense_kept_fp32"] += 1
    graph.opset_imports.setdefault(MS_DOMAIN, 1)
    return summary


def _router_outputs(graph: ir.Graph) -> set[ir.Value]:
    """The outputs of the MatMul/Gemm nodes upstream of an MoE node's router input (breadth-first,
    not past them)."""
    found: set[ir.Value] = set()
    for node in graph:
        if node.domain != MS_DOMAIN or node.op_type != "MoE":
            continue
        queue, seen = deque([node.inputs[1]]), set()
        while queue:
            value = queue.popleft()
            source = value.producer() if value is not None else None
            if source is None or value in seen:
                continue
            seen.add(value)
            if source.op_type in ("MatMul", "Gemm") and not source.domain:
                found.add(source.outputs[0])
            else:
                queue.extend(source.inputs)
    return found


def _replace(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """`new` in `old`'s place, its outputs taking over the names and uses of `old`'s; the trace
    metadata kept (the exporter names each layer's MoE output from it)."""
    new.metadata_props.update(old.metadata_props)
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], list(old.outputs), list(new.outputs))


def _quantized(graph: ir.Graph, weight: ir.Value, scheme: QuantScheme, transposed: bool = False) -> list[ir.Value]:
    """The initializer `weight` replaced by its packed values (same name) and their scales
    (`{name}.scales`); -> those two values."""
    graph.initializers.pop(weight.name)
    values = []
    for tensor in quantized_pair(weight.const_value, scheme, weight.name, transposed):
        value = ir.Value(name=tensor.name, type=ir.TensorType(tensor.dtype), shape=tensor.shape, const_value=tensor)
        graph.register_initializer(value)
        values.append(value)
    return values


def _qmoe(graph: ir.Graph, node: ir.Node, scheme: QuantScheme) -> ir.Node:
    """com.microsoft.MoE (input, router, fc1, fc1_bias, fc2, fc2_bias) -> QMoE, its experts'
    weights [E, N, K] as [E, N, K*bits/8]."""
    hidden, router, fc1, fc1_bias, fc2, fc2_bias = (list(node.inputs) + [None] * 6)[:6]
    inputs = [hidden, router]
    for weight, bias in ((fc1, fc1_bias), (fc2, fc2_bias)):
        inputs += [*_quantized(graph, weight, scheme), bias]
    attributes = [ir.Attr(name, attr.type, attr.value) for name, attr in node.attributes.items() if name in _MOE_ATTRS]
    attributes += [ir.AttrInt64("expert_weight_bits", scheme.bits), ir.AttrInt64("block_size", scheme.block_size),
                   ir.AttrInt64("weights_prepacked", 0)]
    return ir.Node(MS_DOMAIN, "QMoE", inputs, attributes, num_outputs=len(node.outputs), name=node.name)


def _matmul_nbits(graph: ir.Graph, node: ir.Node, scheme: QuantScheme) -> ir.Node | None:
    """MatMul / Gemm with a constant 2D weight -> MatMulNBits, or None where it stays fp32."""
    weight = node.inputs[1]
    if weight is None or not weight.is_initializer() or weight.const_value is None \
            or len(weight.const_value.shape) != 2 or len(weight.uses()) != 1:
        return None
    bias = None
    if node.op_type == "Gemm":
        def attr(name: str, default):
            found = node.attributes.get(name)
            return default if found is None else found.value
        if attr("transA", 0) or not attr("transB", 0) or attr("alpha", 1.0) != 1.0 or attr("beta", 1.0) != 1.0:
            return None
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        n, k = weight.const_value.shape.numpy()
    else:
        k, n = weight.const_value.shape.numpy()
    if n <= 1 or k % scheme.block_size:
        return None
    packed, scales = _quantized(graph, weight, scheme, transposed=node.op_type == "MatMul")
    inputs = [node.inputs[0], packed, scales] + ([None, None, bias] if bias is not None else [])
    attributes = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", scheme.bits),
                  ir.AttrInt64("block_size", scheme.block_size), ir.AttrInt64("accuracy_level", 0)]
    return ir.Node(MS_DOMAIN, "MatMulNBits", inputs, attributes, num_outputs=1, name=node.name)
