"""DeepSeek-V2: the first `first_k_dense_replace` layers are dense; softmax scores, no top-k
normalisation, routed scaling, and for topk_method "group_limited_greedy" group-limited
routing that scores a group by its best expert. Shared experts are a plain MLP."""

from moe_compile.compiler.ir import SharedExpertSpec
from moe_compile.grouped_moe_op import GroupedMoEAttributes

from . import register_adapter
from .base import MoEAdapter


@register_adapter
class DeepseekV2Adapter(MoEAdapter):
    model_type = "deepseek_v2"
    num_experts_key = "n_routed_experts"
    shared_expert_name = "shared_experts"
    router_in_fp32 = True

    def is_moe_layer(self, index: int) -> bool:
        return (self.config.n_routed_experts or 0) > 0 and index >= (self.config.first_k_dense_replace or 0)

    def normalize_topk(self) -> bool:
        return False  # transformers' DeepSeek-V2 router never renormalises

    def attributes(self) -> GroupedMoEAttributes:
        grouped = getattr(self.config, "topk_method", "greedy") == "group_limited_greedy"
        return GroupedMoEAttributes(
            top_k=self.base_top_k(), normalize_topk=self.normalize_topk(), activation=self.activation(),
            routed_scaling=float(self.config.routed_scaling_factor),
            n_group=self.config_int("n_group") if grouped else 1,
            topk_group=self.config_int("topk_group") if grouped else 1,
            group_scoring="max")

    def shared_expert(self) -> SharedExpertSpec:
        return SharedExpertSpec(self.intermediate() * self.config_int("n_shared_experts"), gated=False)
