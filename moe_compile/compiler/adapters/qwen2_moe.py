"""Qwen1.5-MoE / Qwen2-MoE: a sigmoid-gated shared expert beside the routed experts; layers in
`mlp_only_layers`, or off the `decoder_sparse_step` grid, are dense."""

from moe_compile.compiler.ir import SharedExpertSpec

from . import register_adapter
from .base import MoEAdapter


@register_adapter
class Qwen2MoeAdapter(MoEAdapter):
    model_type = "qwen2_moe"
    shared_expert_name = "shared_expert"
    shared_expert_gate_name = "shared_expert_gate"

    def is_moe_layer(self, index: int) -> bool:
        config = self.config
        return (index not in (config.mlp_only_layers or []) and (config.num_experts or 0) > 0
                and (index + 1) % config.decoder_sparse_step == 0)

    def shared_expert(self) -> SharedExpertSpec:
        return SharedExpertSpec(self.config_int("shared_expert_intermediate_size"), gated=True)
