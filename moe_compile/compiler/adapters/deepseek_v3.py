"""DeepSeek-V3: as V2, but sigmoid scores, a score-correction bias that steers the choice (not
the weights), group-limited routing that scores a group by the sum of its two best experts,
optional top-k normalisation, and routed scaling."""

import torch

from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.grouped_moe_op import GroupedMoEAttributes

from . import register_adapter
from .deepseek_v2 import DeepseekV2Adapter


@register_adapter
class DeepseekV3Adapter(DeepseekV2Adapter):
    model_type = "deepseek_v3"

    def normalize_topk(self) -> bool:
        return bool(self.config.norm_topk_prob)

    def attributes(self) -> GroupedMoEAttributes:
        return GroupedMoEAttributes(
            top_k=self.base_top_k(), scoring="sigmoid", normalize_topk=self.normalize_topk(),
            activation=self.activation(), routed_scaling=float(self.config.routed_scaling_factor),
            n_group=self.config_int("n_group"), topk_group=self.config_int("topk_group"),
            group_scoring="sum_top2")

    def _score_bias_key(self, index: int) -> str:
        return f"{self.checkpoint_prefix(index)}{self.router_name}.e_score_correction_bias"

    def checkpoint_keys(self, index: int) -> list[str]:
        return super().checkpoint_keys(index) + [self._score_bias_key(index)]

    def has_score_bias(self) -> bool:
        return True

    def read_score_bias(self, checkpoint: SafetensorsCheckpoint, index: int) -> torch.Tensor:
        return checkpoint.read(self._score_bias_key(index))
