"""`moe_compile::causal_prompt_attention` for ONNX Runtime: one com.microsoft.GroupQueryAttention.

The export's attention (export/grouped_attention.py) computes every score of a prompt against
every key, the masked half included, and keeps the whole [heads, S, S] score matrix for the
softmax: at long prompts that matrix, not the products, is the cost. ONNX Runtime's CPU
GroupQueryAttention computes only the causal half of the scores and builds no mask. Measured (one
attention, 8 query heads over 4 key/value heads, dimension 64, fp32, 2 threads; docs/export.md): the same
at 128 and 512 tokens, 1.19x at 768, 1.25x at 1024, 2.1x at 2048; and slower than the grouped
form at decode (the node copies the cache into its present outputs). So only a whole causal
prompt with nothing cached takes it, from MIN_PROMPT_KERNEL_TOKENS tokens on; the graph decides
when it runs (an If per attention).

Its contract (ONNX Runtime 1.32): query [B, S, H·D], key and value [B, S, KV·D], no past,
`seqlens_k` [B] int32 = the total length - 1 of each sequence (right-aligned: every position
valid), `total_sequence_length` a scalar int32; the output [B, S, H·D]; rotary already applied.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from ..subgraphs import THEN, all_graphs, all_nodes, branch
from .onnxruntime import register_ms_schema
from .ort_support import MS_DOMAIN
from .standard import ints

METADATA_KEY = "moe_compile.prompt_attention"  # "GroupQueryAttention from N tokens": the file holds the If
_INT32 = 6  # onnx.TensorProto.INT32
_SCORES = 3  # GroupQueryAttention's outputs: output, present key, present value, then the scores


def lower_to_group_query_attention(query, key, value, scale: float):
    """query [B, H, S, D], key and value [B, KV, S, D] -> [B, S, H, D]."""
    register_ms_schema("GroupQueryAttention")
    heads, dim, kv_heads = query.shape[1], query.shape[3], key.shape[1]

    def packed(x):  # [B, N, S, D] -> [B, S, N·D]
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), ints(0, 0, -1))

    shape = op.Shape(query)
    length = op.Squeeze(op.Slice(shape, ints(2), ints(3)))  # S, a scalar
    seqlens = op.Cast(op.Expand(op.Sub(length, op.Constant(value_int=1)), op.Slice(shape, ints(0), ints(1))), to=_INT32)
    length = op.Cast(length, to=_INT32)
    outputs = onnxscript.values.Opset(MS_DOMAIN, 1).GroupQueryAttention(
        packed(query), packed(key), packed(value), None, None, seqlens, length,
        num_heads=heads, kv_num_heads=kv_heads, scale=scale, _outputs=3)  # output, present key and value
    return op.Reshape(outputs[0], ints(0, 0, heads, dim))


def drop_score_outputs(graph) -> int:
    """In place, in `graph` (a GraphProto) and its branches: each GroupQueryAttention's fourth
    output, the attention scores ([B, H, S, T], `output_qk` in ONNX Runtime 1.32's schema), removed
    with its value_info where nothing reads it -> how many. The trace writes every output the schema
    has, and ONNX Runtime fills an output that is there: 8 x 4000 x 4000 floats a layer at a
    4000-token prompt of onnx_speed.py's model, whose prefill is 1.25x faster without it and peaks
    at 739 against 1609 MB (benchmarks/prompt_qk_output_ab.py, docs/export.md)."""
    read = {name for node in all_nodes(graph.node) for name in node.input}
    read |= {output.name for holder in all_graphs(graph) for output in holder.output}  # a branch's outputs are its If's
    dropped = 0
    for holder in all_graphs(graph):
        for node in holder.node:
            if (node.op_type == "GroupQueryAttention" and node.domain == MS_DOMAIN and len(node.output) > _SCORES
                    and not read.intersection(node.output[_SCORES:])):
                gone = set(node.output[_SCORES:])
                del node.output[_SCORES:]
                kept = [info for info in holder.value_info if info.name not in gone]
                del holder.value_info[:]
                holder.value_info.extend(kept)
                dropped += 1
    return dropped


def count_prompt_kernels(nodes) -> int:
    """GroupQueryAttention nodes among `nodes` (NodeProtos) and their subgraphs."""
    return sum(node.op_type == "GroupQueryAttention" and node.domain == MS_DOMAIN for node in all_nodes(nodes))


def is_attention_switch(node) -> bool:
    """Whether `node` is an attention's prompt switch: an If whose then-branch runs the kernel."""
    kernel = branch(node, THEN)
    return kernel is not None and count_prompt_kernels(kernel.node) > 0
