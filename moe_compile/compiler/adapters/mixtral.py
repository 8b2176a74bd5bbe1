"""Mixtral: every layer is an MoE layer; top-k always renormalised; the checkpoint keeps the
original names (block_sparse_moe, w1 = gate, w3 = up, w2 = down)."""

from . import register_adapter
from .base import MoEAdapter


@register_adapter
class MixtralAdapter(MoEAdapter):
    model_type = "mixtral"
    num_experts_key = "num_local_experts"
    intermediate_key = "intermediate_size"
    checkpoint_block_name = "block_sparse_moe"
    expert_tensor_names = ("w1", "w3", "w2")

    def normalize_topk(self) -> bool:
        return True
