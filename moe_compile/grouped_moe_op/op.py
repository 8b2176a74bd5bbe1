"""`moe_compile::grouped_moe`, registered with torch.library.

The op is opaque to torch.export / torch.compile (they see only its fake kernel), which is
what lets the ONNX exporter emit one GroupedMoE node per MoE layer. The reference kernel
serves every device; on CUDA the Triton kernel (plugins/grouped_moe/launcher.py) takes over. It is imported on
the first CUDA call, so importing this module needs neither triton nor a GPU; without triton
installed, CUDA calls fall back to the reference with one warning, and so does a layer whose
routing the kernels got wrong on a GPU (plugins/grouped_moe/gpu_failures.py).
"""

from __future__ import annotations

import functools
import warnings

import torch

from .attributes import GroupedMoEAttributes
from .reference import grouped_moe_reference

OP_NAME = "moe_compile::grouped_moe"


@torch.library.custom_op(OP_NAME, mutates_args=())
def grouped_moe(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate_up: torch.Tensor | None,
    b_down: torch.Tensor | None,
    score_bias: torch.Tensor | None,
    top_k: int,
    scoring: str,
    normalize_topk: bool,
    routed_scaling: float,
    activation: str,
    swiglu_alpha: float,
    swiglu_limit: float,
    n_group: int,
    topk_group: int,
    group_scoring: str,
) -> torch.Tensor:
    attrs = GroupedMoEAttributes(top_k, scoring, normalize_topk, routed_scaling, activation, swiglu_alpha,
                                 swiglu_limit, n_group, topk_group, group_scoring)
    return grouped_moe_reference(hidden, router_logits, w_gate_up, w_down, attrs, b_gate_up, b_down, score_bias)


@functools.cache
def _cuda_implementation():
    """The Triton launcher, or the reference (with a warning) where triton is not installed."""
    try:
        from moe_compile.plugins.grouped_moe.launcher import grouped_moe_triton
    except ImportError as exc:
        warnings.warn(f"triton is not importable ({exc}); moe_compile::grouped_moe runs the PyTorch reference "
                      "on CUDA (pip install triton)", stacklevel=2)
        return grouped_moe_reference
    return grouped_moe_triton


@functools.cache
def _kernels_avoided(reason: str) -> None:
    warnings.warn(f"moe_compile::grouped_moe runs the PyTorch reference on CUDA for this layer: {reason}",
                  stacklevel=3)


@grouped_moe.register_kernel("cuda")
def _grouped_moe_cuda(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *attributes):
    """The dispatcher passes the schema's arguments in order; its attributes are in the field order."""
    attrs = GroupedMoEAttributes(*attributes)
    implementation = _cuda_implementation()
    if implementation is not grouped_moe_reference:
        from moe_compile.plugins.grouped_moe.gpu_failures import REASON, failed_on_gpu

        if failed_on_gpu(attrs):
            _kernels_avoided(REASON)
            implementation = grouped_moe_reference
    return implementation(hidden, router_logits, w_gate_up, w_down, attrs, b_gate_up, b_down, score_bias)


@grouped_moe.register_fake
def _grouped_moe_fake(hidden, router_logits, w_gate_up, w_down, *args, **kwargs):
    torch._check(hidden.dim() == 2 and router_logits.dim() == 2, lambda: "hidden and router_logits must be 2-D")
    torch._check(router_logits.shape[0] == hidden.shape[0], lambda: "one router row per token")
    torch._check(w_gate_up.shape[2] == hidden.shape[1], lambda: "w_gate_up must be [E, 2I, H]")
    return hidden.new_empty(hidden.shape)


def call_grouped_moe(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    attrs: GroupedMoEAttributes,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Call the registered op with attributes taken from `attrs`."""
    return torch.ops.moe_compile.grouped_moe(
        hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *attribute_args(attrs))


def attribute_args(attrs: GroupedMoEAttributes) -> tuple:
    """The op's attributes as positional arguments, in the schema's order."""
    return (attrs.top_k, attrs.scoring, attrs.normalize_topk, float(attrs.routed_scaling), attrs.activation,
            float(attrs.swiglu_alpha), float(attrs.swiglu_limit), attrs.n_group, attrs.topk_group,
            attrs.group_scoring)
