"""The GroupedMoE op: attributes, PyTorch reference, and its torch.library registration."""

from .attributes import GroupedMoEAttributes
from .op import OP_NAME, call_grouped_moe
from .reference import grouped_moe_reference, route

__all__ = ["GroupedMoEAttributes", "OP_NAME", "call_grouped_moe", "grouped_moe_reference", "route"]
