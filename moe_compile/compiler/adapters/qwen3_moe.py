"""Qwen3-MoE: routed experts only; the same dense-layer rules as Qwen2-MoE."""

from . import register_adapter
from .qwen2_moe import Qwen2MoeAdapter


@register_adapter
class Qwen3MoeAdapter(Qwen2MoeAdapter):
    model_type = "qwen3_moe"
    shared_expert_name = None
    shared_expert_gate_name = None

    def shared_expert(self) -> None:
        return None
