"""A streamed export's weights: bound to the checkpoint, then written tensor by tensor.

A streamed export traces a skeleton (compiler/compiled.py `skeleton_model`): parameters with
their shapes whose values were never read. Every initializer that holds a model weight is
then bound to a `WeightRecipe`: where its values are (a checkpoint tensor, or one field of an
MoE layer's `ExpertWeights` as the adapter reads it) and what the export does to them (the
transpose the ONNX optimizer folds into the file, the cast to the export dtype, the target's
expert layout). `write_external_data` reads each source once, converts it one slice at a time
(an expert, or a block of rows) and appends the bytes to the external data file; only one
MoE layer's expert weights are resident at a time, never the model, never the whole proto.

Layout: one file, `model.onnx.data` beside `model.onnx`, tensors in the order the writer
visits them (layer by layer), each starting at a multiple of 4096 bytes (what ONNX Runtime
needs to map it rather than copy it). Initializers under 1 KiB stay inside model.onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnx_ir as ir
import torch

from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.ir import ExpertWeights, MoEModel
from moe_compile.dtypes import element_type
from moe_compile.errors import InvalidInput

ALIGNMENT = 4096
INLINE_LIMIT = 1024  # bytes: smaller initializers stay in model.onnx (as today's export does)
_ROWS_PER_SLICE_BYTES = 64 << 20  # a non-expert tensor is converted in slices of about this size
# StaticTopKMoE's parameter and buffer names -> the ExpertWeights field that holds them
_MOE_FIELDS = {"router_weight": "router_weight", "router_bias": "router_bias", "w_gate_up": "gate_up",
               "w_down": "down", "b_gate_up": "gate_up_bias", "b_down": "down_bias", "score_bias": "score_bias"}
_FOLDED_FROM_KEY = "pkg.onnxscript.optimizer.folded_from"  # what onnxscript's folder records on a folded value


class LayerWeights:
    """The MoE layers' `ExpertWeights`, read through the adapter; only the last one read is kept."""

    def __init__(self, moe_model: MoEModel) -> None:
        self._specs = {spec.module_path: spec for spec in moe_model.layers}
        self._index: int | None = None
        self._weights: ExpertWeights | None = None

    def layer_of(self, module_path: str) -> int | None:
        spec = self._specs.get(module_path)
        return None if spec is None else spec.index

    def read(self, module_path: str, field: str) -> torch.Tensor:
        spec = self._specs[module_path]
        if self._index != spec.index:
            self._weights = None  # drop the previous layer before reading the next
            self._weights = spec.load_weights()
            self._index = spec.index
        tensor = getattr(self._weights, field)
        if tensor is None:
            raise InvalidInput(f"MoE layer {spec.index}: the checkpoint has no {field} for this layer")
        return tensor


@dataclass(frozen=True)
class WeightRecipe:
    """One initializer's values: `read()` the source (as stored), permute, cast, lay out."""

    source: str  # the checkpoint tensor or MoE field, for messages
    read: Callable[[], torch.Tensor]
    source_shape: tuple[int, ...]
    dtype: torch.dtype
    layer: int | None = None  # the MoE layer whose ExpertWeights it comes from
    perm: tuple[int, ...] | None = None
    expert_layout: Callable[[torch.Tensor], Iterator[torch.Tensor]] | None = None  # per expert, target order

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source_shape if self.perm is None else tuple(self.source_shape[axis] for axis in self.perm)

    def slices(self) -> Iterator[torch.Tensor]:
        """The tensor in its final layout and dtype, in order along its first axis, a slice at a time."""
        tensor = self.read()
        if tuple(tensor.shape) != self.source_shape:
            raise InvalidInput(f"checkpoint tensor '{self.source}' has shape {tuple(tensor.shape)}, "
                               f"the model expects {self.source_shape}")
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
        """The whole tensor (what the ONNX optimizer gets if it folds a small one)."""
        parts = list(self.slices())
        return torch.stack(parts) if self.expert_layout is not None else torch.cat(parts) if parts[0].dim() else parts[0]


class StreamedTensor(ir.LazyTensor):
    """An initializer whose values come from a `WeightRecipe` when asked for (or when written)."""

    def __init__(self, recipe: WeightRecipe, name: str) -> None:
        dtype = ir.DataType(element_type(torch=recipe.dtype).onnx)
        super().__init__(lambda: ir.tensor(recipe.tensor()), dtype=dtype, shape=ir.Shape(recipe.shape), name=name)
        self.recipe = recipe


def bind_weights(graph: ir.Graph, skeleton: torch.nn.Module, moe_model: MoEModel, dtype: torch.dtype,
                 prefix: str) -> None:
    """Replace the skeleton's values of every weight initializer with a `StreamedTensor`.

    An initializer named after a skeleton parameter or buffer (`prefix` + its name) reads from:
    the MoE layer's ExpertWeights (the rewritten block's tensors), else the checkpoint tensor of
    that name or of a tied alias; a buffer the checkpoint does not hold (rotary frequencies) is
    computed by the model itself and keeps the skeleton's value. A parameter found nowhere
    cannot be exported without inventing values: InvalidInput.
    """
    checkpoint = SafetensorsCheckpoint(moe_model.path)
    layers = LayerWeights(moe_model)
    aliases: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    params = dict(skeleton.named_parameters(remove_duplicate=False))
    buffers = dict(skeleton.named_buffers(remove_duplicate=False))
    for init_name, value in list(graph.initializers.items()):
        name = init_name.removeprefix(prefix)
        if name not in params and name not in buffers:
            continue  # a constant the exporter made, not a weight
        tensor = params.get(name, buffers.get(name))
        module_path, _, attr = name.rpartition(".")
        layer = layers.layer_of(module_path)
        if layer is not None and attr in _MOE_FIELDS:
            field = _MOE_FIELDS[attr]
            recipe = WeightRecipe(f"MoE layer {layer} {field}", lambda m=module_path, f=field: layers.read(m, f),
                                  tuple(tensor.shape), tensor.dtype, layer=layer)
        else:
            candidates = [_checkpoint_name(alias, layers, moe_model.adapter) for alias in aliases.get(id(tensor), [name])]
            stored = next((alias for alias in candidates if checkpoint.has(alias)), None)
            if stored is None:
                if name in buffers:
                    continue  # computed at construction (rotary inv_freq): the skeleton's value is the value
                raise InvalidInput(f"{moe_model.path}: the model's parameter '{name}' has no tensor in the checkpoint; "
                                   "a streamed export reads every weight from safetensors")
            recipe = WeightRecipe(stored, lambda s=stored: checkpoint.read(s), tuple(tensor.shape), tensor.dtype)
        value.const_value = StreamedTensor(recipe, init_name)


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


def fold_weight_transposes(graph: ir.Graph) -> None:
    """Each Transpose whose only input is a bound weight used by it alone becomes an
    initializer holding the transposed weight (a recipe, nothing computed), named as the
    Transpose's output: what onnxscript's optimizer does to every such Transpose, without
    reading the weight. The optimizer then finds nothing of that kind left to fold."""
    for node in list(graph):
        if node.domain or node.op_type != "Transpose":
            continue
        source = node.inputs[0]
        if (source is None or not source.is_initializer() or not isinstance(source.const_value, StreamedTensor)
                or len(source.uses()) != 1 or source.name in {v.name for v in graph.outputs}):
            continue
        recipe = source.const_value.recipe
        attr = node.attributes.get("perm")
        perm = tuple(attr.as_ints()) if attr is not None else tuple(reversed(range(len(recipe.shape))))
        base = recipe.perm or tuple(range(len(recipe.source_shape)))
        folded = replace(recipe, perm=tuple(base[axis] for axis in perm))
        output = node.outputs[0]
        name = output.name
        value = ir.Value(name=None, type=ir.TensorType(source.const_value.dtype), shape=ir.Shape(folded.shape))
        ir.convenience.replace_all_uses_with(output, value)
        graph.remove(node, safe=True)
        graph.initializers.pop(source.name)
        value.name = name
        value.const_value = StreamedTensor(folded, name)
        value.metadata_props[_FOLDED_FROM_KEY] = repr([source.name])
        value.meta[_FOLDED_FROM_KEY] = {source.name}
        graph.register_initializer(value)


def set_expert_layouts(graph: ir.Graph, layouts: dict[str, Callable[[torch.Tensor], Iterator[torch.Tensor]]]) -> None:
    """Give the named expert initializers the target's layout (lowering.expert_layouts)."""
    for name, layout in layouts.items():
        value = graph.initializers.get(name)
        if value is None or not isinstance(value.const_value, StreamedTensor):
            raise RuntimeError(f"expert input '{name}' is not a weight read from the checkpoint")
        value.const_value = StreamedTensor(replace(value.const_value.recipe, expert_layout=layout), name)


def _tensor_bytes(value: ir.Value) -> Iterator[memoryview]:
    const = value.const_value
    if isinstance(const, StreamedTensor):
        for part in const.recipe.slices():
            yield memoryview(part.reshape(-1).view(torch.uint8).numpy())
    else:
        yield memoryview(const.tobytes())


def write_external_data(graph: ir.Graph, data_path: Path) -> int:
    """Write every initializer of at least INLINE_LIMIT bytes to `data_path` (layer by layer,
    4096-aligned) and point it there; -> bytes written. Small ones get their values inline."""
    def layer_key(value: ir.Value) -> tuple[int, int]:
        const = value.const_value
        layer = const.recipe.layer if isinstance(const, StreamedTensor) else None
        return (-1 if layer is None else layer, 0)

    values = sorted((v for v in graph.initializers.values() if v.const_value is not None), key=layer_key)
    offset = 0
    with open(data_path, "wb") as data:
        for value in values:
            const = value.const_value
            if const.nbytes < INLINE_LIMIT:
                if isinstance(const, StreamedTensor):
                    value.const_value = ir.tensor(const.recipe.tensor(), name=value.name)
                continue
            data.write(b"\0" * (-offset % ALIGNMENT))
            offset += -offset % ALIGNMENT
            start = offset
            for chunk in _tensor_bytes(value):
                data.write(chunk)
                offset += chunk.nbytes
            if offset - start != const.nbytes:
                raise RuntimeError(f"initializer {value.name}: wrote {offset - start} bytes, expected {const.nbytes}")
            value.const_value = ir.ExternalTensor(data_path.name, start, offset - start, const.dtype, shape=const.shape,
                                                  name=value.name, base_dir=data_path.parent)
    return offset
