"""Where a skeleton model's weights are: each parameter and buffer bound to a `WeightRecipe`.

A skeleton (compiler/compiled.py `skeleton_model`) has every parameter at its shape and dtype,
its values never read. `weight_recipes` says, for each of them, where the values are: one
field of an MoE layer's `ExpertWeights` as the adapter reads it (the rewritten block's
tensors), else the checkpoint tensor of that name or of a tied alias. A recipe reads its
source when asked and converts it one slice at a time (an expert, or a block of rows), so
whoever consumes it (the streamed export, the layer-by-layer reference) holds one tensor, or
one MoE layer's experts, at a time; never the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from moe_compile.dtypes import element_type
from moe_compile.errors import InvalidInput

from .checkpoint import SafetensorsCheckpoint
from .ir import ExpertWeights, MoEModel

_ROWS_PER_SLICE_BYTES = 64 << 20  # a non-expert tensor is converted in slices of about this size
# StaticTopKMoE's parameter and buffer names -> the ExpertWeights field that holds them
MOE_FIELDS = {"router_weight": "router_weight", "router_bias": "router_bias", "w_gate_up": "gate_up",
               "w_down": "down", "b_gate_up": "gate_up_bias", "b_down": "down_bias", "score_bias": "score_bias"}


class LayerWeights:
    """The MoE layers' `ExpertWeights`, read through the adapter; only the last one read is kept.
    A score bias asked for alone is read alone (`read_score_bias`): the ONNX optimizer folds it
    layer by layer, and reading each layer's experts for it would read the checkpoint again."""

    def __init__(self, moe_model: MoEModel, checkpoint: SafetensorsCheckpoint | None = None) -> None:
        self._specs = {spec.module_path: spec for spec in moe_model.layers}
        self._adapter = moe_model.adapter
        self._checkpoint = checkpoint or SafetensorsCheckpoint(moe_model.path)
        self._index: int | None = None
        self._weights: ExpertWeights | None = None

    def layer_of(self, module_path: str) -> int | None:
        spec = self._specs.get(module_path)
        return None if spec is None else spec.index

    def read(self, module_path: str, field: str) -> torch.Tensor:
        spec = self._specs[module_path]
        if field == "score_bias" and self._index != spec.index:
            return self._present(spec, field, self._adapter.read_score_bias(self._checkpoint, spec.index))
        if self._index != spec.index:
            self._weights = None  # drop the previous layer before reading the next
            self._weights = spec.load_weights()
            self._index = spec.index
        return self._present(spec, field, getattr(self._weights, field))

    @staticmethod
    def _present(spec, field: str, tensor: torch.Tensor | None) -> torch.Tensor:
        if tensor is None:
            raise InvalidInput(f"MoE layer {spec.index}: the checkpoint has no {field} for this layer")
        return tensor

    def release(self) -> None:
        """Drop the layer kept since the last read (its fields are read again if asked for)."""
        self._index, self._weights = None, None


def reader_without_layer(moe_model: MoEModel, checkpoint: SafetensorsCheckpoint, layer: int, field: str,
                         shape: tuple[int, ...], per_expert: bool) -> Callable[[], object] | None:
    """A reader of MoE layer `layer`'s `field` that does not assemble the layer: the router's
    weight as stored; with `per_expert` (a consumer that takes the experts `[expert]` by
    `[expert]`, as an expert layout does), the experts one at a time (`ExpertsOnDemand`). None for
    any other field, or where the architecture lays its experts out itself (it overrides
    `read_weights`)."""
    adapter = moe_model.adapter
    if not adapter.reads_one_expert():
        return None
    if field == "router_weight":
        return lambda: checkpoint.read(adapter.router_key(layer))
    if per_expert and field in ("gate_up", "down"):
        return lambda: ExpertsOnDemand(adapter, checkpoint, layer, field, shape)
    return None


class ExpertsOnDemand:
    """An MoE layer's `gate_up` or `down` [E, ...] read one expert at a time (`[expert]`): what a
    recipe with an expert layout slices, without the layer-sized tensor `LayerWeights` assembles
    (1.2 GB of bf16 for a Qwen3-30B-A3B layer, its pages faulted in afresh for every layer)."""

    def __init__(self, adapter, checkpoint: SafetensorsCheckpoint, index: int, field: str,
                 shape: tuple[int, ...]) -> None:
        self._adapter, self._checkpoint, self._index, self._field = adapter, checkpoint, index, field
        self.shape = torch.Size(shape)

    def __getitem__(self, expert: int) -> torch.Tensor:
        return self._adapter.read_expert(self._checkpoint, self._index, expert, self._field)


class ExpertLayout(Protocol):
    """How a target lays an expert tensor [E, ...] out in its file (lowering.expert_layouts)."""

    def __call__(self, weights: torch.Tensor) -> Iterator[torch.Tensor]:
        """The tensor in the target's order, one laid-out piece at a time along the first axis."""

    def laid_out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of `shape`'s tensor once laid out (a layout may regroup the experts)."""


@dataclass(frozen=True)
class WeightRecipe:
    """One initializer's values: `read()` the source (as stored), permute, cast, lay out."""

    source: str  # the checkpoint tensor or MoE field, for messages
    read: Callable[[], torch.Tensor]
    source_shape: tuple[int, ...]
    dtype: torch.dtype
    layer: int | None = None  # the MoE layer whose ExpertWeights it comes from
    perm: tuple[int, ...] | None = None
    expert_layout: ExpertLayout | None = None  # per expert, target order

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.source_shape if self.perm is None else tuple(self.source_shape[axis] for axis in self.perm)
        return shape if self.expert_layout is None else self.expert_layout.laid_out_shape(shape)

    def slices(self) -> Iterator[torch.Tensor]:
        """The tensor in its final layout and dtype, in order along its first axis, a slice at a time."""
        tensor = self.read()
        if tuple(tensor.shape) != self.source_shape:
            raise InvalidInput(f"checkpoint tensor '{self.source}' has shape {tuple(tensor.shape)}, "
                               f"the model expects {self.source_shape}")
        if isinstance(tensor, ExpertsOnDemand) and self.expert_layout is None and self.perm is None:
            # a slice per expert, each read when its turn comes (the loader checked their shapes)
            for expert in range(tensor.shape[0]):
                yield tensor[expert].to(self.dtype).unsqueeze(0)
            return
        if self.perm is not None:
            tensor = tensor.permute(self.perm)
        if self.expert_layout is not None:
            for expert in self.expert_layout(tensor):  # [...] one expert
                yield expert.to(self.dtype).contiguous()
            return
        if tensor.dim() == 0:
            yield tensor.to(self.dtype).contiguous()
            return
        step = max(1, _ROWS_PER_SLICE_BYTES // max(1, tensor[0].numel() * element_type(torch=self.dtype).itemsize))
        for start in range(0, tensor.shape[0], step):
            yield tensor[start:start + step].to(self.dtype).contiguous()

    def tensor(self) -> torch.Tensor:
        """The whole tensor (what the ONNX optimizer gets if it folds a small one, and a unit of
        the layer-by-layer model), each slice copied into place as it comes: one copy of the
        tensor and one slice at a time, not the slices and their concatenation (2.8 GB against
        1.4 GB for a Qwen1.5-MoE layer's experts in fp32)."""
        whole = torch.empty(self.shape, dtype=self.dtype)
        start = 0
        for part in self.slices():
            if whole.dim() == 0:
                whole.copy_(part)
                break
            rows = 1 if self.expert_layout is not None else part.shape[0]  # a laid-out piece is one row
            whole[start:start + rows].copy_(part.reshape(rows, *whole.shape[1:]))
            start += rows
        if whole.dim() and start != whole.shape[0]:
            raise RuntimeError(f"{self.source}: its slices fill {start} of {whole.shape[0]} rows")
        return whole


class WeightSources:
    """A recipe for each parameter and buffer of `skeleton` (by name, tied aliases included) that
    holds a model weight: `recipe(name)`. None for a name that is not the skeleton's or a buffer
    the checkpoint does not hold (rotary frequencies: computed by the model itself); a parameter
    found nowhere cannot be filled without inventing values: InvalidInput when it is asked for.

    With `experts_one_at_a_time`, an MoE layer's experts and router are read tensor by tensor
    where the architecture allows (`reader_without_layer`), not from the layer assembled as
    stored: for a consumer that builds each tensor whole in another dtype (the layer-by-layer
    model), the assembled copy would sit beside it (1.1 GB of bf16 for a Qwen1.5-MoE layer)."""

    def __init__(self, skeleton: torch.nn.Module, moe_model: MoEModel, experts_one_at_a_time: bool = False) -> None:
        self._moe_model, self._experts_one_at_a_time = moe_model, experts_one_at_a_time
        self._path = moe_model.path
        self._checkpoint = SafetensorsCheckpoint(moe_model.path)
        self._layers = LayerWeights(moe_model, self._checkpoint)
        self._adapter = moe_model.adapter
        self._aliases: dict[int, list[str]] = {}
        for name, param in skeleton.named_parameters(remove_duplicate=False):
            self._aliases.setdefault(id(param), []).append(name)
        self._params = dict(skeleton.named_parameters(remove_duplicate=False))
        self._buffers = dict(skeleton.named_buffers(remove_duplicate=False))

    def release(self) -> None:
        """Drop the MoE layer's ExpertWeights kept for the next field of the same layer."""
        self._layers.release()

    def stored_dtype(self, name: str) -> torch.dtype | None:
        """The dtype the checkpoint stores `name`'s tensor in; None where `name` is not one
        checkpoint tensor (an MoE layer's assembled fields, a buffer the model computes)."""
        recipe = self.recipe(name)
        info = self._checkpoint.index.get(recipe.source) if recipe is not None else None
        known = element_type(safetensors=info.dtype) if info is not None else None
        return known.torch if known is not None else None

    def recipe(self, name: str) -> WeightRecipe | None:
        tensor = self._params.get(name, self._buffers.get(name))
        if tensor is None:
            return None
        module_path, _, attr = name.rpartition(".")
        layer = self._layers.layer_of(module_path)
        if layer is not None and attr in MOE_FIELDS:
            field = MOE_FIELDS[attr]
            read = self._experts_one_at_a_time and reader_without_layer(
                self._moe_model, self._checkpoint, layer, field, tuple(tensor.shape), per_expert=True)
            return WeightRecipe(f"MoE layer {layer} {field}", read or (lambda: self._layers.read(module_path, field)),
                                tuple(tensor.shape), tensor.dtype, layer=layer)
        candidates = [_checkpoint_name(alias, self._layers, self._adapter)
                      for alias in self._aliases.get(id(tensor), [name])]
        stored = next((alias for alias in candidates if self._checkpoint.has(alias)), None)
        if stored is None:
            if name in self._buffers:
                return None
            raise InvalidInput(f"{self._path}: the model's parameter '{name}' has no tensor in the checkpoint; "
                               "a streamed model reads every weight from safetensors")
        return WeightRecipe(stored, lambda: self._checkpoint.read(stored), tuple(tensor.shape), tensor.dtype)


def _checkpoint_name(name: str, layers: LayerWeights, adapter) -> str:
    """`name` as the checkpoint spells it: the rewritten block (StaticTopKMoE) holds the original
    block's shared expert and its gate as `shared_expert` / `shared_expert_gate`, which the
    architecture may name otherwise (DeepSeek: `shared_experts`)."""
    for own, original in (("shared_expert_gate", adapter.shared_expert_gate_name),
                          ("shared_expert", adapter.shared_expert_name)):
        module_path, found, rest = name.partition(f".{own}.")
        if found and original and layers.layer_of(module_path) is not None:
            return f"{module_path}.{original}.{rest}"
    return name
