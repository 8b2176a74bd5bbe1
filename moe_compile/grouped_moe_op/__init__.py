"""The GroupedMoE op, the contract every implementation meets: its attributes (attributes.py),
the PyTorch reference that defines it (reference.py) and its torch.library registration (op.py).
It imports nothing from compiler/, export/ or plugins/ (the CUDA kernel is imported on the first
CUDA call), so all of them can depend on it."""

from .attributes import GroupedMoEAttributes
from .op import OP_NAME, call_grouped_moe
from .reference import choose_experts, expert_outputs_per_slot, grouped_moe_reference, route, routing_weights

__all__ = ["GroupedMoEAttributes", "OP_NAME", "call_grouped_moe", "choose_experts", "expert_outputs_per_slot",
           "grouped_moe_reference", "route", "routing_weights"]
