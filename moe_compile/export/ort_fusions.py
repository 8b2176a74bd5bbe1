"""Attention and norms in the fused forms ONNX Runtime's CPU provider runs fastest, by
onnxscript's ONNX Runtime fusions (`onnxscript.rewriter.ort_fusions`): RMS norms become
SimplifiedLayerNormalization, a residual add and the norm after it
SkipSimplifiedLayerNormalization, the attention (with its KV cache) MultiHeadAttention, where
the graph torch.onnx wrote from transformers' SDPA attention matches their patterns (so such an
export keeps that form, not export/grouped_attention.py's). What did not match stays as it was: the
report lists what each export got (`ort_fusions`), and validate runs on that graph.

Only for the onnxruntime target at fp32 (the contrib ops are ONNX Runtime's; their CPU kernels at
fp16 were not measured), and only when asked (`export --ort-fusions`): measured on onnx_speed.py's
model against the default export (benchmarks/attention_fusion.py, docs/export.md), the fused
file ran prompts at 0.75-1.00x and decode steps at 0.46-0.90x of the default's, whose long prompts
run GroupQueryAttention (before that kernel its prompts were 6-13 % faster)."""

from __future__ import annotations

import functools
from collections import Counter

import onnx_ir as ir

from .lowering.onnxruntime import register_ms_schema
from .lowering.ort_support import MS_DOMAIN

METADATA_KEY = "moe_compile.ort_fusions"
NORM_FUSIONS_KEY = "moe_compile.norm_fusions"  # what fuse_norms added (the default at fp32)


@functools.cache
def _onnx_ops() -> frozenset[str]:
    """ONNX's own default-domain ops, taken before this module registers any of ONNX Runtime's there."""
    from onnx.defs import get_all_schemas

    return frozenset(schema.name for schema in get_all_schemas() if schema.domain in ("", "ai.onnx"))


def _contrib_ops(model: ir.Model) -> Counter:
    """ONNX Runtime's own ops in the graph: com.microsoft's, and those it puts in the default
    domain (SimplifiedLayerNormalization), which ONNX itself does not define."""
    return Counter((node.domain, node.op_type) for node in model.graph
                   if node.domain == MS_DOMAIN or (node.domain in ("", "ai.onnx") and node.op_type not in _onnx_ops()))


def fuse_norms(model: ir.Model) -> dict[str, int]:
    """The default for ONNX Runtime at fp32: only the fusions that leave the attention alone. RMS
    norms become SimplifiedLayerNormalization, with the residual add before them
    SkipSimplifiedLayerNormalization: ~90 fewer nodes a decode step on onnx_speed.py's model, which
    decoded ~6 % faster for it (by hand, real greedy steps in fresh sessions; docs/export.md).
    In place; -> {contrib op: how many were added}."""
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    before = _contrib_ops(model)
    common_passes.ShapeInferencePass()(model)  # what optimize_for_ort prepares its fusions with
    optimize(model)
    fuse_rms_normalization(model)
    fuse_skip_rms_normalization(model)
    return _added(model, before)


def fuse_for_onnxruntime(model: ir.Model) -> dict[str, int]:
    """Fuse in place; -> {contrib op: how many the fusions added}, e.g. {"MultiHeadAttention": 6}."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    before = _contrib_ops(model)
    fused, _ = optimize_for_ort(model)
    if fused is not model:
        raise RuntimeError("onnxscript's optimize_for_ort returned a new model; moe-compile expects it in place")
    return _added(model, before)


def _added(model: ir.Model, before: Counter) -> dict[str, int]:
    """{contrib op: how many more `model` has than `before`}, their schemas registered for onnx.checker."""
    added = _contrib_ops(model) - before
    for domain, op_type in added:
        register_ms_schema(op_type, "" if domain == "ai.onnx" else domain)
    return {op_type: count for (_, op_type), count in sorted(added.items(), key=lambda item: item[0][1])}
