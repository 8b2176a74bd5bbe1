"""`compiled_model` with one decoder layer's weights resident at a time: the reference for
models larger than memory, and `reference_lm`, which picks between the two by size.

The model is a skeleton (`skeleton_model`: shapes, no values read). Its weights are grouped in
units, each decoder layer one unit and every other module that holds weights (embeddings, the
final norm, lm_head) one each. A unit's weights are read from the checkpoint through
`WeightSources` when its forward starts and dropped when it returns, so a forward pass holds
the activations, the KV cache and one unit's weights (plus the expert being converted: an MoE
layer's experts are read one at a time where the architecture stores them so), never the
model. Each forward reads the whole checkpoint once: the same numbers as the loaded model
(tests/compiler/test_layered_model.py), but slower where the model fits (the demo's
self-sampled calibration tokens: 88 s against 17 s), hence `reference_lm`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checkpoint import SafetensorsCheckpoint
from .compiled import compiled_model, skeleton_model
from .ir import MoEModel
from .weight_sources import WeightSources

LOADED_MAX_BYTES = 2 << 30  # a checkpoint up to this size is loaded whole; a larger one runs layer by layer


def weights_fit(moe_model: MoEModel) -> bool:
    """Whether the checkpoint is small enough to hold whole (LOADED_MAX_BYTES), where running it
    layer by layer would only cost time."""
    return SafetensorsCheckpoint(moe_model.path).nbytes("") <= LOADED_MAX_BYTES


def reference_lm(moe_model: MoEModel, dtype: str = "fp32", top_k: dict[int, int] | None = None,
                 prepare: Callable[[torch.nn.Module], object] | None = None) -> torch.nn.Module:
    """The rewritten model at `top_k` (default: the base top-k): loaded whole where `weights_fit`,
    else layer by layer; `prepare` runs on the loaded model, or on each unit as it is read (the
    reference of a quantized file dequantizes its weights there)."""
    if not weights_fit(moe_model):
        return layered_model(moe_model, dtype, top_k, on_fill=prepare)[0]
    model = compiled_model(moe_model, dtype, top_k)[0]
    if prepare is not None:
        prepare(model)
    return model


def layered_model(moe_model: MoEModel, dtype: str = "fp32", top_k: dict[int, int] | None = None,
                  on_fill: Callable[[torch.nn.Module], object] | None = None) -> tuple[torch.nn.Module, dict]:
    """The rewritten model at `top_k` (default: the base top-k) in `dtype`, its weights read unit
    by unit during each forward; `on_fill(unit)` runs on each unit once its weights are in (the
    reference of a quantized file dequantizes them there)."""
    model, top_k = skeleton_model(moe_model, dtype, top_k)
    sources = WeightSources(model, moe_model, experts_one_at_a_time=True)
    for prefix, module, names in _units(model, moe_model):
        _WeightsOnEntry(prefix, module, names, sources, on_fill).attach()
    return model, top_k


def _units(model: torch.nn.Module, moe_model: MoEModel):
    """(prefix, module, the weight names under it relative to the module) per unit."""
    layer_paths = {spec.module_path.rsplit(".", 1)[0] for spec in moe_model.layers}  # model.layers.3
    stack_path = next(iter(layer_paths)).rsplit(".", 1)[0]  # model.layers
    stack = model.get_submodule(stack_path)
    for index, layer in enumerate(stack):
        yield f"{stack_path}.{index}", layer, _weight_names(layer, recurse=True)
    for path, module in model.named_modules():
        if path == stack_path or path.startswith(stack_path + "."):
            continue
        names = _weight_names(module, recurse=False)
        if names:
            yield path, module, names


def _weight_names(module: torch.nn.Module, recurse: bool) -> list[str]:
    return [name for name, _ in module.named_parameters(recurse=recurse, remove_duplicate=False)] + \
        [name for name, _ in module.named_buffers(recurse=recurse, remove_duplicate=False)]


class _WeightsOnEntry:
    """Hooks that fill `module`'s weights before its forward and empty them after."""

    def __init__(self, prefix: str, module: torch.nn.Module, names: list[str], sources: WeightSources,
                 on_fill: Callable[[torch.nn.Module], object] | None = None) -> None:
        self.module, self.on_fill = module, on_fill
        self.slots = []  # (owner module, attribute, is a parameter, the weight's recipe)
        for name in names:
            recipe = sources.recipe(f"{prefix}.{name}" if prefix else name)
            if recipe is None:
                continue  # a buffer the model computes itself
            owner_path, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            self.slots.append((owner, attr, attr in owner._parameters, recipe))
        self.sources = sources

    def attach(self) -> None:
        self._empty()  # the skeleton's unread allocations go now
        self.module.register_forward_pre_hook(lambda module, args: self._fill())
        self.module.register_forward_hook(lambda module, args, output: self._empty())

    def _fill(self) -> None:
        for owner, attr, is_parameter, recipe in self.slots:
            self._set(owner, attr, is_parameter, recipe.tensor())
        self.sources.release()
        if self.on_fill is not None:
            self.on_fill(self.module)

    def _empty(self) -> None:
        for owner, attr, is_parameter, recipe in self.slots:
            self._set(owner, attr, is_parameter, torch.empty(0, dtype=recipe.dtype))

    @staticmethod
    def _set(owner: torch.nn.Module, attr: str, is_parameter: bool, tensor: torch.Tensor) -> None:
        if is_parameter:
            owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            owner._buffers[attr] = tensor
