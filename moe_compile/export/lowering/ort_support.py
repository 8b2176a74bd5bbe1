"""What com.microsoft.MoE (ONNX Runtime 1.32) can and cannot express of a GroupedMoE layer.

Pure Python (no onnxscript), so `inspect` can ask without building anything. The node applies
a softmax to its router input and then its own top-k: routing of any other kind (sigmoid
scores, a score-correction bias, group-limited choice, routed scaling) is done in standard ops
beside the node, which is then handed logits that select exactly the chosen experts
(onnxruntime.py). Its experts run SwiGLU only: a GELU-gated layer stays in standard ops.
"""

from __future__ import annotations

from moe_compile.grouped_moe_op import GroupedMoEAttributes

MS_DOMAIN = "com.microsoft"
# From this many tokens on, an fp32 com.microsoft.MoE layer runs as sorted per-expert Gemms
# instead (sorted_experts.py: measured faster there; one token is the node's).
MIN_SORTED_TOKENS = 4
SORTED_PROMPTS = f"sorted experts from {MIN_SORTED_TOKENS} tokens"  # what the export report and inspect say
# Where com.microsoft.MoE runs every token count (fp32, `export --moe-prompts node`), each expert is
# handed to it as this many slices of its intermediate channels, laid out slice-major: the kernel
# gives each thread a range of expert indices and runs an expert's products on one thread, so this
# puts one slice of every chosen expert on each of two threads (onnxruntime.py; docs/export.md).
EXPERT_SLICES = 2
EXPERT_HALVES = "in halves of their intermediate channels"  # what the export report says (`export --moe-prompts node`)
# ... and for a sorted export, whose few-token node gets them so from the file's whole experts (sorted_experts.py)
FEW_TOKEN_HALVES = f"{EXPERT_HALVES} below {MIN_SORTED_TOKENS} tokens (gathered from the file's when the session starts)"
# Where the choice of experts is handed to the node as log-weights, a chosen expert's weight is at
# least this inside the log, so never -inf (onnxruntime.selecting_logits, sorted_experts._HalvedNode).
SMALLEST_WEIGHT = 1e-30


def expert_slices(halves: bool, intermediate: int) -> int:
    """How many slices a layer's experts are cut into: EXPERT_SLICES where halves were asked for
    and the intermediate size divides, else 1 (whole experts)."""
    return EXPERT_SLICES if halves and intermediate % EXPERT_SLICES == 0 else 1


def ort_unsupported_reason(attrs: GroupedMoEAttributes) -> str | None:
    """Why com.microsoft.MoE cannot run this layer's experts at all, or None."""
    if attrs.activation not in ("silu_glu", "swiglu_clamp"):
        return f"{attrs.activation} experts (com.microsoft.MoE's CPU kernel runs SwiGLU only)"
    return None


def ort_routing_reason(attrs: GroupedMoEAttributes, has_score_bias: bool, quantized: bool = False) -> str | None:
    """Why the routing must be done outside com.microsoft.MoE (QMoE when `quantized`), or None."""
    if quantized and not attrs.normalize_topk and attrs.scoring == "softmax" and not has_score_bias \
            and not attrs.group_limited and attrs.routed_scaling == 1.0:
        return "top-k weights not renormalised (com.microsoft.QMoE's CPU kernel always renormalises them)"
    reasons = []
    if attrs.scoring != "softmax":
        reasons.append(f"{attrs.scoring} scoring")
    if has_score_bias:
        reasons.append("score-correction bias")
    if attrs.group_limited:
        reasons.append("group-limited routing")
    if attrs.routed_scaling != 1.0:
        reasons.append(f"routed scaling {attrs.routed_scaling:g}")
    return ", ".join(reasons) + " (com.microsoft.MoE routes by softmax alone)" if reasons else None
