"""The GroupedMoE op: attributes, PyTorch reference, and its torch.library registration."""

from .attributes import GroupedMoEAttributes
from .op import OP_NAME, call_grouped_moe
from .reference import choose_experts, expert_outputs_per_slot, grouped_moe_reference, route, routing_weights

__all__ = ["GroupedMoEAttributes", "OP_NAME", "call_grouped_moe", "choose_experts", "expert_outputs_per_slot",
           "grouped_moe_reference", "route", "routing_weights"]
