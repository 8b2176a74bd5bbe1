"""The adapter interface: how one Hugging Face architecture maps onto the MoE IR.

An adapter is a small declarative class, registered by `model_type`. The defaults describe
the common transformers v5 layout:

  torch module     model.layers.{i}.mlp            the MoE block
                   ├── gate        router: weight [E, H], attribute top_k
                   ├── experts     gate_up_proj [E, 2I, H], down_proj [E, H, I]
                   └── shared expert module (+ its sigmoid gate), if any
  checkpoint       model.layers.{i}.mlp.gate.weight
                   model.layers.{i}.mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight

so most architectures only name their config keys and say which layers are MoE layers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.ir import ExpertWeights, SharedExpertSpec
from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import GroupedMoEAttributes

# transformers' hidden_act names -> the GroupedMoE activation of a gated (GLU) expert.
GLU_ACTIVATIONS = {
    "silu": "silu_glu",
    "swish": "silu_glu",
    "gelu": "gelu_glu",
    "gelu_pytorch_tanh": "gelu_tanh_glu",
    "gelu_new": "gelu_tanh_glu",
}


class MoEAdapter:
    model_type: ClassVar[str]

    # config attributes
    num_experts_key: ClassVar[str] = "num_experts"
    intermediate_key: ClassVar[str] = "moe_intermediate_size"
    top_k_key: ClassVar[str] = "num_experts_per_tok"

    # names in the torch module and in the checkpoint
    block_name: ClassVar[str] = "mlp"
    checkpoint_block_name: ClassVar[str | None] = None  # when the checkpoint names the block otherwise
    router_name: ClassVar[str] = "gate"
    expert_tensor_names: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")
    shared_expert_name: ClassVar[str | None] = None
    shared_expert_gate_name: ClassVar[str | None] = None

    # behaviour of the block
    router_in_fp32: ClassVar[bool] = False  # router matmul in fp32 whatever the model dtype
    returns_router_output: ClassVar[bool] = False  # block returns (hidden, router output)

    def __init__(self, config: Any) -> None:
        self.config = config

    # --- what the config says -------------------------------------------------------------

    def is_moe_layer(self, index: int) -> bool:
        return True

    def num_experts(self) -> int:
        return self.config_int(self.num_experts_key)

    def intermediate(self) -> int:
        return self.config_int(self.intermediate_key)

    def base_top_k(self) -> int:
        return self.config_int(self.top_k_key)

    def normalize_topk(self) -> bool:
        return bool(getattr(self.config, "norm_topk_prob", False))

    def attributes(self) -> GroupedMoEAttributes:
        """The GroupedMoE attributes at the model's own top-k (override for other routing)."""
        return GroupedMoEAttributes(
            top_k=self.base_top_k(), normalize_topk=self.normalize_topk(), activation=self.activation())

    def activation(self) -> str:
        act = getattr(self.config, "hidden_act", "silu")
        if act not in GLU_ACTIVATIONS:
            raise InvalidInput(
                f"config.json: hidden_act '{act}' is not supported for experts "
                f"(supported: {', '.join(sorted(GLU_ACTIVATIONS))})")
        return GLU_ACTIVATIONS[act]

    def shared_expert(self) -> SharedExpertSpec | None:
        return None

    def config_int(self, key: str) -> int:
        value = getattr(self.config, key, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"config.json: '{key}' must be a positive integer, got {value!r}")
        return value

    # --- where things are -------------------------------------------------------------------

    def block_path(self, index: int) -> str:
        return f"model.layers.{index}.{self.block_name}"

    def checkpoint_prefix(self, index: int) -> str:
        return f"model.layers.{index}.{self.checkpoint_block_name or self.block_name}."

    # --- weights from the checkpoint (lazy) ---------------------------------------------------

    def _expert_key(self, index: int, expert: int, which: int) -> str:
        return f"{self.checkpoint_prefix(index)}experts.{expert}.{self.expert_tensor_names[which]}.weight"

    def checkpoint_keys(self, index: int) -> list[str]:
        """Every tensor `read_weights` will read for this layer."""
        experts = range(self.num_experts())
        return [self.router_key(index)] + [
            self._expert_key(index, e, which) for e in experts for which in range(3)]

    def check_checkpoint(self, checkpoint: SafetensorsCheckpoint, index: int) -> None:
        """Fail now, from the headers alone, if this layer's tensors are not all there."""
        checkpoint.require(self.checkpoint_keys(index))

    def read_weights(self, checkpoint: SafetensorsCheckpoint, index: int) -> ExpertWeights:
        """Read one layer and assemble the GroupedMoE layout, one expert at a time."""
        router_weight = checkpoint.read(self.router_key(index))
        gate_up = down = None
        for expert in range(self.num_experts()):
            gate, up, down_e = (checkpoint.read(self._expert_key(index, expert, which)) for which in range(3))
            if gate_up is None:
                gate_up = gate.new_empty(self.num_experts(), 2 * gate.shape[0], gate.shape[1])  # [E, 2I, H]
                down = down_e.new_empty(self.num_experts(), *down_e.shape)  # [E, H, I]
            gate_up[expert, :gate.shape[0]] = gate  # into place: a torch.cat of the two first cost a copy more
            gate_up[expert, gate.shape[0]:] = up
            down[expert] = down_e
        return ExpertWeights(router_weight=router_weight, gate_up=gate_up, down=down,
                             score_bias=self.read_score_bias(checkpoint, index))

    def router_key(self, index: int) -> str:
        return f"{self.checkpoint_prefix(index)}{self.router_name}.weight"

    def reads_one_expert(self) -> bool:
        """Whether `read_expert` gives what `read_weights` lays out (it does where an architecture
        keeps the per-expert tensors this class reads; not where it overrides `read_weights`)."""
        return type(self).read_weights is MoEAdapter.read_weights

    def read_expert(self, checkpoint: SafetensorsCheckpoint, index: int, expert: int, field: str) -> torch.Tensor:
        """One expert's `gate_up` [2I, H] or `down` [H, I], as `read_weights` lays it out."""
        if field == "down":
            return checkpoint.read(self._expert_key(index, expert, 2))
        return torch.cat([checkpoint.read(self._expert_key(index, expert, which)) for which in range(2)])

    def has_score_bias(self) -> bool:
        """Whether the layers carry a score-correction bias (DeepSeek-V3): no tensor is read."""
        return False

    def read_score_bias(self, checkpoint: SafetensorsCheckpoint, index: int) -> torch.Tensor | None:
        """The layer's score-correction bias alone (None without one): read by itself where a
        graph needs only it (the ONNX optimizer folds it), not with the layer's experts."""
        return None

    # --- the live torch module ----------------------------------------------------------------

    def router(self, block: nn.Module) -> nn.Module:
        return getattr(block, self.router_name)

    def block_weights(self, block: nn.Module) -> ExpertWeights:
        """The block's own parameters in GroupedMoE layout (shared, not copied, where possible)."""
        router = self.router(block)
        return ExpertWeights(
            router_weight=router.weight, gate_up=block.experts.gate_up_proj, down=block.experts.down_proj,
            router_bias=getattr(router, "bias", None),
            score_bias=getattr(router, "e_score_correction_bias", None))

    def shared_modules(self, block: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
        """(shared expert, its sigmoid gate) of the block, each None where absent."""
        def child(name: str | None) -> nn.Module | None:
            return getattr(block, name) if name else None

        return child(self.shared_expert_name), child(self.shared_expert_gate_name)
