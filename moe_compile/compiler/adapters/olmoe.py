"""OLMoE: every layer is an MoE layer; softmax routing, optional top-k normalisation."""

from . import register_adapter
from .base import MoEAdapter


@register_adapter
class OlmoeAdapter(MoEAdapter):
    model_type = "olmoe"
    intermediate_key = "intermediate_size"
