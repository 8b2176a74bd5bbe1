"""Swap each MoE block of one model for a `StaticTopKMoE` that runs the GroupedMoE op.

Only module instances of the model being compiled are replaced; no transformers class is
patched. The new module reuses the block's own parameters wherever their layout already is
the GroupedMoE layout, so rewriting costs no extra memory for most architectures.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import GroupedMoEAttributes, call_grouped_moe

from .adapters import MoEAdapter
from .ir import ExpertWeights, MoEModel


def _as_parameter(tensor: torch.Tensor | None) -> nn.Parameter | None:
    if tensor is None or isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=False)


class StaticTopKMoE(nn.Module):
    """One MoE block with a static top-k: router matmul -> GroupedMoE op (+ shared expert)."""

    def __init__(
        self,
        weights: ExpertWeights,
        attributes: GroupedMoEAttributes,
        shared_expert: nn.Module | None = None,
        shared_expert_gate: nn.Module | None = None,
        router_in_fp32: bool = False,
        returns_router_output: bool = False,
    ) -> None:
        super().__init__()
        self.attributes = attributes.validate(weights.gate_up.shape[0])
        self.router_weight = _as_parameter(weights.router_weight)  # [E, H]
        self.router_bias = _as_parameter(weights.router_bias)  # [E]
        self.w_gate_up = _as_parameter(weights.gate_up)  # [E, 2I, H]
        self.w_down = _as_parameter(weights.down)  # [E, H, I]
        self.b_gate_up = _as_parameter(weights.gate_up_bias)  # [E, 2I]
        self.b_down = _as_parameter(weights.down_bias)  # [E, H]
        self.register_buffer("score_bias", weights.score_bias)  # [E] or None
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate
        self.router_in_fp32 = router_in_fp32
        self.returns_router_output = returns_router_output

    @property
    def top_k(self) -> int:
        return self.attributes.top_k

    def extra_repr(self) -> str:
        experts, _, hidden = self.w_gate_up.shape
        return f"experts={experts}, hidden={hidden}, top_k={self.top_k}, scoring={self.attributes.scoring}"

    def routed_experts(self, x: torch.Tensor) -> torch.Tensor:
        """Router matmul + the GroupedMoE op: x [T, H] -> [T, H] (no shared expert)."""
        if self.router_in_fp32:
            logits = F.linear(x.float(), self.router_weight.float(),
                              None if self.router_bias is None else self.router_bias.float())  # [T, E]
        else:
            logits = F.linear(x, self.router_weight, self.router_bias)  # [T, E]
        return call_grouped_moe(x, logits, self.w_gate_up, self.w_down, self.attributes,
                                self.b_gate_up, self.b_down, self.score_bias)

    def forward(self, hidden_states: torch.Tensor):
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])  # [T, H]
        out = self.routed_experts(x)  # [T, H]
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        out = out.reshape(shape)
        # Blocks that return (hidden, router output) have callers that drop the second item.
        return (out, None) if self.returns_router_output else out


def static_block(adapter: MoEAdapter, block: nn.Module, top_k: int) -> StaticTopKMoE:
    """A StaticTopKMoE equivalent to `block`, run at `top_k`."""
    shared, shared_gate = adapter.shared_modules(block)
    return StaticTopKMoE(
        adapter.block_weights(block), adapter.attributes().with_top_k(top_k), shared, shared_gate,
        router_in_fp32=adapter.router_in_fp32, returns_router_output=adapter.returns_router_output)


def rewrite_model(model: nn.Module, moe_model: MoEModel, top_k: Mapping[int, int] | None = None) -> nn.Module:
    """Replace, in place, every MoE block of `model` with a StaticTopKMoE.

    `top_k` maps a decoder-layer index to its static k; layers it leaves out keep their base
    top-k. Raises InvalidInput for an unknown layer or a k outside 1..E.
    """
    top_k = dict(top_k or {})
    unknown = sorted(set(top_k) - {spec.index for spec in moe_model.layers})
    if unknown:
        raise InvalidInput(f"layer {unknown[0]} is not an MoE layer of this model "
                           f"(MoE layers: {', '.join(str(spec.index) for spec in moe_model.layers)})")
    per_layer = {spec.index: top_k.get(spec.index, spec.base_top_k) for spec in moe_model.layers}
    for spec in moe_model.layers:  # check every layer before touching any: no half-rewritten model
        try:
            spec.attributes.with_top_k(per_layer[spec.index]).validate(spec.num_experts)
        except InvalidInput as exc:
            raise InvalidInput(f"layer {spec.index}: {exc}") from None
    for spec in moe_model.layers:
        parent_path, _, name = spec.module_path.rpartition(".")
        parent = model.get_submodule(parent_path)
        setattr(parent, name, static_block(moe_model.adapter, getattr(parent, name), per_layer[spec.index]))
    return model
