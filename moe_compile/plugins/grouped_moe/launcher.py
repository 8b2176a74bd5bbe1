"""Launch the grouped-MoE Triton kernels (kernels.py) for one call of the op.

Allocates the scratch buffers `LaunchPlan` sizes, picks the launch configuration (tuned table
or default) and launches the six kernels in order (four at decode). Works on CUDA tensors, and
on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), which is how CI checks the kernels.

Host work per call is kept small, since at decode it is as long as the kernels: the scratch
buffers are views of one allocation, and each shape's grids, constexprs and buffer layout are
computed once (cached by plan and attributes), not at every call.
"""

from __future__ import annotations

import functools
import math

import torch

from moe_compile.dtypes import element_type

from . import kernels
from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes
from .configs import KernelConfig, lookup_config
from .launch_plan import LaunchPlan

_BUFFER_ALIGNMENT = 128  # bytes: each scratch view starts on such a boundary (Triton assumes 16)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@functools.lru_cache(maxsize=1024)  # one entry per token count and dtype seen
def _layout(plan: LaunchPlan, act_dtype: torch.dtype) -> tuple[int, tuple[tuple[str, tuple, torch.dtype, int], ...]]:
    """(total bytes, (name, shape, dtype, byte offset) of each scratch buffer in one workspace)."""
    views, offset = [], 0
    for name, (shape, kind) in plan.buffers().items():
        dtype = act_dtype if kind == "act" else element_type(torch=kind).torch
        views.append((name, shape, dtype, offset))
        offset += -(-math.prod(shape) * dtype.itemsize // _BUFFER_ALIGNMENT) * _BUFFER_ALIGNMENT
    return offset, tuple(views)


def allocate(plan: LaunchPlan, act_dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """The scratch buffers of one call, views of one allocation (uninitialised: every kernel
    writes before it reads)."""
    total, views = _layout(plan, act_dtype)
    workspace = torch.empty(max(total, 1), dtype=torch.uint8, device=device)
    return {name: workspace[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
            for name, shape, dtype, offset in views}


@functools.lru_cache(maxsize=1024)
def _launch_args(plan: LaunchPlan, attrs: GroupedMoEAttributes, score_bias: bool, gate_up_bias: bool,
                 down_bias: bool, fp32: bool) -> tuple[dict, dict, dict]:
    """(grids, constexprs, GEMM options) of a plan, computed once per shape and attributes."""
    return plan.grids(), plan.constexprs(attrs, score_bias=score_bias, gate_up_bias=gate_up_bias,
                                         down_bias=down_bias, fp32=fp32), plan.options()


def route_and_align(hidden: torch.Tensor, router_logits: torch.Tensor, attrs: GroupedMoEAttributes, plan: LaunchPlan,
                    buf: dict[str, torch.Tensor], score_bias: torch.Tensor | None = None) -> None:
    """Kernels 1-3 (1 alone for a single chunk): routing into topk_ids/topk_weights and the
    NaN/Inf flags, then the expert-sorted, BLOCK_M-aligned rows."""
    grids, constexprs, _ = _launch_args(plan, attrs, score_bias is not None, False, False, hidden.dtype == torch.float32)
    placement = (buf["expert_counts"], buf["expert_start"], buf["block_expert"])
    decode_only = (*placement, buf["sorted_ids"], plan.max_blocks) if plan.single_chunk else (None,) * 5
    kernels._route_kernel[grids["route"]](
        router_logits, hidden, buf["topk_weights"] if score_bias is None else score_bias,  # stand-in, never read
        plan.tokens, plan.experts, router_logits.stride(0), hidden.stride(0),
        buf["topk_ids"], buf["topk_weights"], buf["slot_rank"], buf["chunk_counts"], buf["nonfinite"], *decode_only,
        **constexprs["route"])
    if plan.single_chunk:
        return
    kernels._scan_kernel[grids["scan"]](
        buf["chunk_counts"], buf["topk_ids"], plan.chunks, plan.experts, plan.max_blocks, buf["chunk_offsets"],
        *placement,
        **constexprs["scan"])
    kernels._scatter_kernel[grids["scatter"]](
        buf["topk_ids"], buf["slot_rank"], buf["chunk_offsets"], buf["expert_start"], plan.slots, plan.experts,
        buf["sorted_ids"], **constexprs["scatter"])


def experts_and_combine(hidden: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                        b_gate_up: torch.Tensor | None, b_down: torch.Tensor | None, attrs: GroupedMoEAttributes,
                        plan: LaunchPlan, buf: dict[str, torch.Tensor], out: torch.Tensor) -> None:
    """Kernels 4-6: both GEMMs over the aligned rows, then the per-token sum into `out`."""
    grids, constexprs, options = _launch_args(plan, attrs, False, b_gate_up is not None, b_down is not None,
                                              hidden.dtype == torch.float32)
    rows = (buf["sorted_ids"], buf["block_expert"], buf["expert_counts"], buf["expert_start"])
    stand_in = buf["topk_weights"]  # for an absent bias: never read
    kernels._gate_up_kernel[grids["gate_up"]](
        hidden, w_gate_up, stand_in if b_gate_up is None else b_gate_up, *rows,
        attrs.top_k, plan.experts, plan.gemm_blocks, *w_gate_up.stride(),
        0 if b_gate_up is None else b_gate_up.stride(0), buf["inter"], **constexprs["gate_up"], **options)
    kernels._down_kernel[grids["down"]](
        buf["inter"], w_down, stand_in if b_down is None else b_down, buf["topk_weights"], *rows,
        plan.experts, plan.gemm_blocks, *w_down.stride(), 0 if b_down is None else b_down.stride(0), buf["per_slot"],
        **constexprs["down"], **options)
    kernels._combine_kernel[grids["combine"]](buf["per_slot"], buf["nonfinite"], plan.hidden, out,
                                              **constexprs["combine"])


def launch_plan(hidden: torch.Tensor, w_gate_up: torch.Tensor, attrs: GroupedMoEAttributes,
                config: KernelConfig | None = None) -> LaunchPlan:
    tokens, hidden_size = hidden.shape
    experts, two_inter, _ = w_gate_up.shape
    attrs.validate(experts)
    if config is None:
        config = lookup_config(tokens, experts, two_inter // 2, attrs.top_k, device_name(hidden.device))
    return LaunchPlan(tokens=tokens, experts=experts, hidden=hidden_size, inter=two_inter // 2, top_k=attrs.top_k,
                      n_group=attrs.n_group if attrs.group_limited else 1, config=config)


def grouped_moe_triton(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    attrs: GroupedMoEAttributes,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Same contract as reference.grouped_moe_reference; `config` overrides the tuned lookup.

    The weights may have any strides (they are passed to the kernels); activations and biases
    are made contiguous, which costs nothing when they already are.
    """
    plan = launch_plan(hidden, w_gate_up, attrs, config)
    out = hidden.new_empty(hidden.shape)
    if plan.tokens == 0:
        return out
    hidden = hidden.contiguous()
    b_gate_up, b_down, score_bias = (None if t is None else t.contiguous() for t in (b_gate_up, b_down, score_bias))
    buf = allocate(plan, hidden.dtype, hidden.device)
    # The NaN/Inf rule of reference.py is applied by the kernels (route flags, combine writes NaN).
    route_and_align(hidden, router_logits.contiguous(), attrs, plan, buf, score_bias)
    experts_and_combine(hidden, w_gate_up, w_down, b_gate_up, b_down, attrs, plan, buf, out)
    return out
