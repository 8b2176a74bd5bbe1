"""config.json against the checkpoint, from the safetensors headers alone, before any command
prints or plans anything.

A config that lies (a hidden size, an expert size, a head count, a layer count the weights do
not have) would otherwise be printed by `inspect` and planned by `plan`, and fail (or worse,
run with layers left out) only when the weights are loaded. Two checks, both without reading
a tensor:

- the model transformers builds from the config, on the meta device: every one of its
  tensors that the checkpoint also names must have the checkpoint's shape (embeddings,
  attention, norms, routers, shared experts: every field the architecture reads), and the
  checkpoint must have no decoder layer past `num_hidden_layers`;
- each MoE layer's experts assembled by its adapter from meta tensors of the checkpoint's
  shapes (the same code that later reads them), then checked against the GroupedMoE layout.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from moe_compile.dtypes import element_type
from moe_compile.errors import InvalidInput, one_line

from .checkpoint import SafetensorsCheckpoint

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class _MetaCheckpoint:
    """A checkpoint whose reads return meta tensors of the stored shapes and dtypes: no data."""

    def __init__(self, checkpoint: SafetensorsCheckpoint) -> None:
        self._checkpoint = checkpoint
        self.folder = checkpoint.folder

    def has(self, name: str) -> bool:
        return self._checkpoint.has(name)

    def require(self, names: list[str]) -> None:
        self._checkpoint.require(names)

    def read(self, name: str) -> torch.Tensor:
        self.require([name])
        info = self._checkpoint.index[name]
        known = element_type(safetensors=info.dtype)
        dtype = known.torch if known is not None else torch.float32
        return torch.empty(info.shape, dtype=dtype, device="meta")


def check_layer_count(checkpoint: SafetensorsCheckpoint, num_hidden_layers: int) -> None:
    stored = {int(match.group(1)) for name in checkpoint.index if (match := _LAYER.match(name))}
    if stored and max(stored) >= num_hidden_layers:
        raise InvalidInput(f"{checkpoint.folder}: the checkpoint has decoder layers up to {max(stored)} "
                           f"({max(stored) + 1} layers) but config.json says num_hidden_layers {num_hidden_layers}; "
                           "refusing to compile a model with layers left out")


def check_module_shapes(config: Any, checkpoint: SafetensorsCheckpoint) -> None:
    """Every tensor of the config's model (built on the meta device) that the checkpoint names has its shape."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001 (transformers raises many kinds for values it cannot build)
        raise InvalidInput(f"{checkpoint.folder}/config.json: transformers cannot build this "
                           f"{config.model_type} model ({one_line(exc)})") from None
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        info = checkpoint.index.get(name)
        if info is not None and tuple(info.shape) != tuple(tensor.shape):
            raise InvalidInput(f"{checkpoint.folder}: config.json disagrees with the checkpoint: tensor '{name}' "
                               f"is {list(info.shape)} in the weights but {list(tensor.shape)} by config.json")


def check_expert_shapes(adapter: Any, checkpoint: SafetensorsCheckpoint, index: int) -> None:
    """One MoE layer assembled from meta tensors by its adapter, against config.json's sizes."""
    where = f"{checkpoint.folder}: MoE layer {index}"
    try:
        weights = adapter.read_weights(_MetaCheckpoint(checkpoint), index)
    except RuntimeError as exc:  # torch.cat / copy_ of tensors whose shapes do not fit together
        raise InvalidInput(f"{where}: the checkpoint's expert tensors do not fit together ({one_line(exc)})") from None
    problem = weights.shape_problem(adapter.num_experts(), adapter.config_int("hidden_size"), adapter.intermediate())
    if problem:
        raise InvalidInput(f"{where}: {problem}")
