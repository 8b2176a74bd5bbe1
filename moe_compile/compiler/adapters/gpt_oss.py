"""gpt-oss: biased router and experts, softmax over the top-k logits (the same as normalised
top-k of the full softmax), and the clamped SwiGLU. Its experts are stored fused, transposed
and with gate/up columns interleaved; `_grouped_layout` turns them into GroupedMoE layout.
Checkpoints in MXFP4 (`*_blocks`, `*_scales`) must be dequantised first."""

import torch
from torch import nn

from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.ir import ExpertWeights
from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import GroupedMoEAttributes

from . import register_adapter
from .base import MoEAdapter


def _grouped_layout(router_weight, router_bias, gate_up, gate_up_bias, down, down_bias) -> ExpertWeights:
    """gate_up [E, H, 2I] (columns g0 u0 g1 u1 ...), down [E, I, H] -> GroupedMoE layout."""
    rows = gate_up.transpose(1, 2)  # [E, 2I, H], rows interleaved
    return ExpertWeights(
        router_weight=router_weight, router_bias=router_bias,
        gate_up=torch.cat([rows[:, 0::2], rows[:, 1::2]], dim=1).contiguous(),  # [E, 2I, H]
        gate_up_bias=torch.cat([gate_up_bias[:, 0::2], gate_up_bias[:, 1::2]], dim=1).contiguous(),  # [E, 2I]
        down=down.transpose(1, 2).contiguous(),  # [E, H, I]
        down_bias=down_bias)


@register_adapter
class GptOssAdapter(MoEAdapter):
    model_type = "gpt_oss"
    num_experts_key = "num_local_experts"
    intermediate_key = "intermediate_size"
    router_name = "router"
    returns_router_output = True
    _expert_tensors = ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias")

    def normalize_topk(self) -> bool:
        return True

    def attributes(self) -> GroupedMoEAttributes:
        return GroupedMoEAttributes(
            top_k=self.base_top_k(), normalize_topk=True, activation="swiglu_clamp",
            swiglu_alpha=float(self.config.swiglu_alpha), swiglu_limit=float(self.config.swiglu_limit))

    def checkpoint_keys(self, index: int) -> list[str]:
        prefix = self.checkpoint_prefix(index)
        return [f"{prefix}router.weight", f"{prefix}router.bias"] + [
            f"{prefix}experts.{name}" for name in self._expert_tensors]

    def check_checkpoint(self, checkpoint: SafetensorsCheckpoint, index: int) -> None:
        quantised = f"{self.checkpoint_prefix(index)}experts.gate_up_proj_blocks"
        if checkpoint.has(quantised):
            raise InvalidInput(f"{checkpoint.folder}: gpt-oss experts are MXFP4-quantised ({quantised}); "
                               "save a dequantised (bf16) copy first")
        super().check_checkpoint(checkpoint, index)

    def read_weights(self, checkpoint: SafetensorsCheckpoint, index: int) -> ExpertWeights:
        return _grouped_layout(*(checkpoint.read(key) for key in self.checkpoint_keys(index)))

    def block_weights(self, block: nn.Module) -> ExpertWeights:
        experts = block.experts
        return _grouped_layout(block.router.weight, block.router.bias,
                               *(getattr(experts, name) for name in self._expert_tensors))
