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

One initializer at a time: each weight is read, quantized and replaced before the next.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from onnx import helper, numpy_helper

from moe_compile.quantization import pack, quantize_blocks
from moe_compile.quantization.scheme import QuantScheme

from .lowering.onnxruntime import MS_DOMAIN, register_ms_schema

_MOE_ATTRS = ("k", "activation_type", "swiglu_fusion", "normalize_routing_weights", "activation_alpha",
              "activation_beta", "swiglu_limit")


def quantize_graph(onnx_model, scheme: QuantScheme) -> dict:
    """Quantize `onnx_model`'s experts and dense projections in place; -> what was quantized."""
    for name in ("QMoE", "MatMulNBits"):
        register_ms_schema(name)
    graph = onnx_model.graph
    initializers = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    routers = _router_nodes(graph)
    summary = {"scheme": scheme.metadata(), "experts": 0, "dense": 0, "dense_kept_fp32": 0}
    nodes, added = [], []
    for node in graph.node:
        new = None
        if node.domain == MS_DOMAIN and node.op_type == "MoE":
            new = _qmoe(node, initializers, added, scheme)
            summary["experts"] += 1
        elif node.op_type in ("MatMul", "Gemm") and not node.domain and node.output[0] not in routers:
            new = _matmul_nbits(node, initializers, uses, added, scheme)
            summary["dense" if new is not None else "dense_kept_fp32"] += 1
        nodes.append(new if new is not None else node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    stale = {init.name for init in graph.initializer}  # value_info of a replaced weight still says float
    kept = [info for info in graph.value_info if info.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(opset.domain == MS_DOMAIN for opset in onnx_model.opset_import):
        onnx_model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return summary


def _router_nodes(graph) -> set[str]:
    """The outputs of the MatMul/Gemm nodes upstream of an MoE node's router input (breadth-first,
    not past them)."""
    producer = {out: node for node in graph.node for out in node.output}
    found: set[str] = set()
    for node in graph.node:
        if node.domain != MS_DOMAIN or node.op_type != "MoE":
            continue
        queue, seen = deque([node.input[1]]), set()
        while queue:
            value = queue.popleft()
            source = producer.get(value)
            if source is None or value in seen:
                continue
            seen.add(value)
            if source.op_type in ("MatMul", "Gemm") and not source.domain:
                found.add(source.output[0])
            else:
                queue.extend(name for name in source.input if name)
    return found


def _quantize_into(init, rows: np.ndarray, scheme: QuantScheme, added: list) -> str:
    """Replace initializer `init` by `rows` [..., N, K] block-quantized and packed
    ([..., N, K/block, block*bits/8] uint8, same name); add its scales [..., N, K/block]; -> their name."""
    blocks = quantize_blocks(torch.from_numpy(np.array(rows, copy=True, order="C")), scheme.bits, scheme.block_size)
    name, scales = init.name, f"{init.name}.scales"
    init.CopyFrom(numpy_helper.from_array(pack(blocks), name))
    added.append(numpy_helper.from_array(blocks.scales.numpy().astype(rows.dtype), scales))
    return scales


def _qmoe(node, initializers: dict, added: list, scheme: QuantScheme):
    """com.microsoft.MoE (input, router, fc1, fc1_bias, fc2, fc2_bias) -> QMoE, its experts'
    weights [E, N, K] as [E, N, K*bits/8]."""
    hidden, router, fc1, fc1_bias, fc2, fc2_bias = (list(node.input) + [""] * 6)[:6]
    new_inputs = [hidden, router]
    for weight, bias in ((fc1, fc1_bias), (fc2, fc2_bias)):
        init = initializers[weight]
        array = numpy_helper.to_array(init)  # [E, N, K]
        scales = _quantize_into(init, array, scheme, added)
        init.dims[:] = [array.shape[0], array.shape[1], array.shape[2] * scheme.bits // 8]
        new_inputs += [weight, scales, bias]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _MOE_ATTRS}
    return helper.make_node("QMoE", new_inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                            expert_weight_bits=scheme.bits, block_size=scheme.block_size, weights_prepacked=0,
                            **{k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()})


def _matmul_nbits(node, initializers: dict, uses: dict, added: list, scheme: QuantScheme):
    """MatMul / Gemm with a constant 2D weight -> MatMulNBits, or None where it stays fp32."""
    weight_name = node.input[1]
    init = initializers.get(weight_name)
    if init is None or len(init.dims) != 2 or uses.get(weight_name, 0) != 1:
        return None
    bias = ""
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or not attrs.get("transB", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            return None
        bias = node.input[2] if len(node.input) > 2 else ""
        n, k = init.dims
    else:
        k, n = init.dims
    if n <= 1 or k % scheme.block_size:
        return None
    array = numpy_helper.to_array(init)
    scales = _quantize_into(init, array if node.op_type == "Gemm" else array.T, scheme, added)  # rows [N, K]
    inputs = [node.input[0], weight_name, scales] + (["", "", bias] if bias else [])
    return helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN,
                            K=k, N=n, bits=scheme.bits, block_size=scheme.block_size, accuracy_level=0)


