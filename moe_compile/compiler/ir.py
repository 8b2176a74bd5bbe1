"""The MoE IR: what moe-compile knows about a model's MoE layers, independent of its architecture.

An adapter (compiler/adapters) turns a model folder into a `MoEModel`: one `MoELayerSpec` per
MoE layer, whose expert weights stay on disk until `load_weights()` is called. Weights are in
GroupedMoE layout: `gate_up [E, 2I, H]` (gate rows, then up rows) and `down [E, H, I]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from moe_compile.grouped_moe_op import GroupedMoEAttributes


@dataclass(frozen=True)
class SharedExpertSpec:
    """A dense expert every token goes through, beside the routed ones."""

    intermediate: int
    gated: bool  # scaled by sigmoid(x @ w_gate) per token (Qwen2-MoE)


@dataclass(eq=False)
class ExpertWeights:
    """One MoE layer's routed-expert and router tensors, in GroupedMoE layout."""

    router_weight: torch.Tensor  # [E, H]
    gate_up: torch.Tensor  # [E, 2I, H]
    down: torch.Tensor  # [E, H, I]
    router_bias: torch.Tensor | None = None  # [E]
    gate_up_bias: torch.Tensor | None = None  # [E, 2I]
    down_bias: torch.Tensor | None = None  # [E, H]
    score_bias: torch.Tensor | None = None  # [E], DeepSeek-V3's score-correction bias

    def tensors(self) -> list[torch.Tensor]:
        return [tensor for tensor in (getattr(self, f.name) for f in fields(self)) if tensor is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def shape_problem(self, experts: int, hidden: int, intermediate: int) -> str | None:
        """What does not fit the GroupedMoE layout of [E experts, H hidden, I intermediate], or None."""
        expected = {"router_weight": (experts, hidden), "gate_up": (experts, 2 * intermediate, hidden),
                    "down": (experts, hidden, intermediate), "router_bias": (experts,),
                    "gate_up_bias": (experts, 2 * intermediate), "down_bias": (experts, hidden),
                    "score_bias": (experts,)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor is None:
                continue
            if tuple(tensor.shape) != shape:
                return f"{name} has shape {list(tensor.shape)}, expected {list(shape)} from config.json"
            if not tensor.is_floating_point():
                return f"{name} is {str(tensor.dtype).removeprefix('torch.')}, not floating point"
        return None


@dataclass(frozen=True)
class MoELayerSpec:
    index: int  # decoder layer index
    module_path: str  # where the MoE block sits in the torch model, e.g. "model.layers.3.mlp"
    hidden: int
    intermediate: int
    num_experts: int
    attributes: GroupedMoEAttributes  # top_k is the model's own (base) top-k
    shared_expert: SharedExpertSpec | None
    parameter_bytes: int  # router + routed experts + shared expert, as stored
    load_weights: Callable[[], ExpertWeights] = field(repr=False, compare=False)
    has_score_bias: bool = False  # a score-correction bias steers the choice (DeepSeek-V3)

    @property
    def base_top_k(self) -> int:
        return self.attributes.top_k


@dataclass(frozen=True)
class MoEModel:
    model_type: str
    path: Path
    config: Any  # the transformers PretrainedConfig
    num_hidden_layers: int
    layers: list[MoELayerSpec]
    structure: dict  # config, tensor names and shapes: read from headers, so free to compute
    adapter: Any = field(repr=False, compare=False)  # the MoEAdapter that read it
    weights_digest: Callable[[], str] = field(repr=False, compare=False)  # -> the content hash

    @cached_property
    def fingerprint(self) -> dict:
        """`structure` plus the content hash of the weights (`weights_sha256`): what plans,
        profiles and exports carry. Computed on first use, one read of the checkpoint, so a
        command that never needs it (inspect) never pays for it."""
        return {**self.structure, "weights_sha256": self.weights_digest()}
