"""The GroupedMoE op's attributes: the one place their names, values and checks live.

Every implementation (the PyTorch reference, the Triton kernel, each ONNX lowering, the
TensorRT plugin) reads its attributes from a `GroupedMoEAttributes`, so that a name or an
allowed value is written down once. Semantics are those of ../shared/DESIGN.md and are
spelled out in `reference.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moe_compile.errors import InvalidInput

SCORINGS = ("softmax", "sigmoid")
ACTIVATIONS = ("silu_glu", "gelu_glu", "gelu_tanh_glu", "swiglu_clamp")
# How a group of experts is scored for group-limited routing: DeepSeek-V2 takes the best
# expert's score, DeepSeek-V3 the sum of its two best (score-correction bias included).
GROUP_SCORINGS = ("max", "sum_top2")


@dataclass(frozen=True)
class GroupedMoEAttributes:
    top_k: int
    scoring: str = "softmax"
    normalize_topk: bool = False
    routed_scaling: float = 1.0
    activation: str = "silu_glu"
    # Only read by activation == "swiglu_clamp" (gpt-oss): gate clamped to <= limit, up to
    # [-limit, limit], out = gate * sigmoid(alpha * gate) * (up + 1).
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    # Group-limited routing: experts are split into n_group equal groups and only the best
    # topk_group groups are eligible. n_group == 1 turns it off.
    n_group: int = 1
    topk_group: int = 1
    group_scoring: str = "max"

    @property
    def group_limited(self) -> bool:
        return self.n_group > 1 and self.topk_group < self.n_group

    def eligible_experts(self, num_experts: int) -> int:
        """How many experts a token can choose from after group-limited routing."""
        if not self.group_limited:
            return num_experts
        return self.topk_group * (num_experts // self.n_group)

    def validate(self, num_experts: int) -> GroupedMoEAttributes:
        """Raise InvalidInput, with one line saying what is wrong, unless these are valid."""
        if self.scoring not in SCORINGS:
            raise InvalidInput(f"scoring '{self.scoring}' is not one of {', '.join(SCORINGS)}")
        if self.activation not in ACTIVATIONS:
            raise InvalidInput(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.group_scoring not in GROUP_SCORINGS:
            raise InvalidInput(f"group_scoring '{self.group_scoring}' is not one of {', '.join(GROUP_SCORINGS)}")
        if self.n_group < 1 or num_experts % self.n_group:
            raise InvalidInput(f"n_group={self.n_group} does not divide the {num_experts} experts into equal groups")
        if not 1 <= self.topk_group <= self.n_group:
            raise InvalidInput(f"topk_group={self.topk_group} is outside 1..n_group={self.n_group}")
        eligible = self.eligible_experts(num_experts)
        if not 1 <= self.top_k <= eligible:
            raise InvalidInput(f"top_k={self.top_k} is outside 1..{eligible}" + (
                f" (group-limited routing leaves {eligible} of {num_experts} experts eligible)"
                if eligible != num_experts else ""))
        return self

    def with_top_k(self, top_k: int) -> GroupedMoEAttributes:
        return dataclasses.replace(self, top_k=top_k)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
