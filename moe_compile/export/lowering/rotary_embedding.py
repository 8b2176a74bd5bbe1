"""`moe_compile::rotary` for ONNX Runtime: one com.microsoft.RotaryEmbedding (export/fused_rotary.py).

RotaryEmbedding (ONNX Runtime 1.32, CPU) rotates x [B, N, S, D] by cos_cache[position_ids] and
sin_cache[position_ids], each [max positions, D/2], the two halves of D non-interleaved. The model's
cos and sin are [B, S, D] per token, their halves equal: their first halves, as B*S rows, are that
cache for position ids 0..B*S-1 laid out [B, S]. Every layer computes the same cache from the same
cos and sin; ONNX Runtime's common-subexpression pass keeps one.
"""

from __future__ import annotations

import onnxscript
from onnxscript import opset18 as op

from .onnxruntime import register_ms_schema
from .ort_support import MS_DOMAIN
from .standard import ints


def lower_to_rotary_embedding(x, cos, sin):
    """x [B, N, S, D], cos and sin [B, S, D] -> x rotated, [B, N, S, D]."""
    register_ms_schema("RotaryEmbedding")
    half = x.shape[3] // 2

    def cache(table):  # [B, S, D] -> [B*S, D/2]
        return op.Reshape(op.Slice(table, ints(0), ints(half), ints(2)), ints(-1, half))

    rows = op.Shape(cos, start=0, end=2)  # [B, S]
    positions = op.Reshape(op.Range(op.Constant(value_int=0), op.ReduceProd(rows, keepdims=0), op.Constant(value_int=1)), rows)
    return onnxscript.values.Opset(MS_DOMAIN, 1).RotaryEmbedding(x, positions, cache(cos), cache(sin), interleaved=0)
