"""A streamed export's weights: bound to the checkpoint, then written tensor by tensor.

A streamed export traces a skeleton (compiler/compiled.py `skeleton_model`): parameters with
their shapes whose values were never read. Every initializer that holds a model weight is
then bound to its `WeightRecipe` (compiler/weight_sources.py: a checkpoint tensor, or one field
of an MoE layer's `ExpertWeights` as the adapter reads it), to which the export adds what it
does to the values (the transpose the ONNX optimizer folds into the file, the cast to the export dtype, the target's
expert layout). `write_external_data` reads each source once, converts it one slice at a time
(an expert, or a block of rows) and appends the bytes to the external data file; only one
MoE layer's expert weights are resident at a time, never the model, never the whole proto.

Layout: one file, `model.onnx.data` beside `model.onnx`: the MoE layers' tensors first (written
while the graph is traced: export/early_experts.py), then the others layer by layer, each
starting at a multiple of 4096 bytes (what ONNX Runtime needs to map it rather than copy it).
Initializers under 1 KiB stay inside model.onnx.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import onnx_ir as ir
import torch

from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.weight_sources import ExpertLayout, WeightRecipe, WeightSources
from moe_compile.direct_file import DirectFile
from moe_compile.dtypes import element_type
from moe_compile.read_ahead import read_ahead

ALIGNMENT = 4096
INLINE_LIMIT = 1024  # bytes: smaller initializers stay in model.onnx (as today's export does)
_SLICES_AHEAD = 3  # converted slices waiting to be written (each an expert, or rows of about 64 MB)
K = TypeVar("K")
_FOLDED_FROM_KEY = "pkg.onnxscript.optimizer.folded_from"  # what onnxscript's folder records on a folded value


class SlicedTensor(ir.LazyTensor):
    """An initializer computed when asked for, and written a slice at a time (`byte_parts`)."""

    @property
    def layer(self) -> int | None:
        """The MoE layer it comes from (written with that layer), or None."""
        return None

    def byte_parts(self) -> Iterator[memoryview]:
        """Its bytes in order, a slice at a time."""
        raise NotImplementedError

    def values(self) -> ir.TensorProtocol:
        """All of it, in memory, named (what a small one is written inline as)."""
        raise NotImplementedError

    def key(self) -> tuple | None:
        """What makes two such tensors hold the same bytes; None where nothing does (`recipe_key`)."""
        return None


class StreamedTensor(SlicedTensor):
    """An initializer whose values come from a `WeightRecipe` when asked for (or when written)."""

    def __init__(self, recipe: WeightRecipe, name: str) -> None:
        dtype = ir.DataType(element_type(torch=recipe.dtype).onnx)
        super().__init__(self.values, dtype=dtype, shape=ir.Shape(recipe.shape), name=name)
        self.recipe = recipe

    def values(self) -> ir.TensorProtocol:
        return ir.tensor(self.recipe.tensor(), name=self.name)

    @property
    def layer(self) -> int | None:
        return self.recipe.layer

    def byte_parts(self) -> Iterator[memoryview]:
        for part in self.recipe.slices():
            yield memoryview(part.reshape(-1).view(torch.uint8).numpy())

    def key(self) -> tuple:
        recipe = self.recipe
        return recipe.source, recipe.source_shape, recipe.perm, recipe.dtype, recipe.expert_layout


def bind_weights(graph: ir.Graph, skeleton: torch.nn.Module, moe_model: MoEModel, prefix: str) -> None:
    """Replace the skeleton's values of every weight initializer (named `prefix` + a parameter or
    buffer name) with a `StreamedTensor` of its recipe (compiler/weight_sources.py)."""
    sources = WeightSources(skeleton, moe_model)
    for init_name, value in list(graph.initializers.items()):
        recipe = sources.recipe(init_name.removeprefix(prefix))
        if recipe is not None:  # else a constant the exporter made, or a buffer the model computes
            value.const_value = StreamedTensor(recipe, init_name)


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


def set_expert_layouts(graph: ir.Graph, layouts: dict[str, ExpertLayout]) -> None:
    """Give the named expert initializers the target's layout (lowering.expert_layouts)."""
    for name, layout in layouts.items():
        value = graph.initializers.get(name)
        if value is None or not isinstance(value.const_value, StreamedTensor):
            raise RuntimeError(f"expert input '{name}' is not a weight read from the checkpoint")
        value.const_value = StreamedTensor(replace(value.const_value.recipe, expert_layout=layout), name)
        value.shape = value.const_value.shape  # a layout may regroup the experts (experts in halves)


def _tensor_bytes(const: ir.TensorProtocol) -> Iterator[memoryview]:
    if isinstance(const, SlicedTensor):
        yield from const.byte_parts()
    else:
        yield memoryview(const.tobytes())


_END = object()  # after the last slice of a written tensor


def _tensor_parts(tensors: list[tuple[K, ir.TensorProtocol]]) -> Iterator[tuple[K, ir.TensorProtocol, object]]:
    """In write order: (key, tensor, its values as an ir tensor) for one small enough to stay
    inline (one not from the checkpoint needs nothing), else (key, tensor, bytes) per slice and
    then (key, tensor, _END)."""
    for key, const in tensors:
        if const.nbytes < INLINE_LIMIT:
            if isinstance(const, SlicedTensor):
                yield key, const, const.values()
            continue
        for chunk in _tensor_bytes(const):
            yield key, const, chunk
        yield key, const, _END


def append_tensors(data: DirectFile, tensors: list[tuple[K, ir.TensorProtocol]], data_path: Path,
                   stop: threading.Event | None = None,
                   thread_name: str = "export-weights") -> dict[K, ir.TensorProtocol]:
    """Append each tensor of at least INLINE_LIMIT bytes to `data` (the file at `data_path`),
    4096-aligned; -> {key: where its values now are (an ir.ExternalTensor into `data_path`, or
    the values of a small one from the checkpoint)}. The checkpoint is read and converted a few
    slices ahead of the writes, in a second thread (read_ahead.py): the conversion's time hides
    behind the disk's (that thread is named `thread_name`). Stops between two slices once
    `stop` is set."""
    placed: dict[K, ir.TensorProtocol] = {}
    start = None
    for key, const, part in read_ahead(_tensor_parts(tensors), depth=_SLICES_AHEAD, name=thread_name):
        if stop is not None and stop.is_set():
            break
        if isinstance(part, ir.Tensor):
            placed[key] = part
            continue
        if start is None:
            data.pad_to(ALIGNMENT)
            start = data.tell()
        if part is not _END:
            data.write(part)
            continue
        length = data.tell() - start
        if length != const.nbytes:
            raise RuntimeError(f"initializer {const.name}: wrote {length} bytes, expected {const.nbytes}")
        placed[key] = external_tensor(data_path, start, length, const)
        start = None
    return placed


def external_tensor(data_path: Path, offset: int, length: int, like: ir.TensorProtocol) -> ir.ExternalTensor:
    """`like`'s dtype, shape and name, its bytes at `offset` in `data_path`."""
    return ir.ExternalTensor(data_path.name, offset, length, like.dtype, shape=like.shape, name=like.name,
                             base_dir=data_path.parent)


def recipe_key(const: ir.TensorProtocol) -> tuple | None:
    """What makes two streamed tensors hold the same bytes (for one read from the checkpoint: its
    source, permutation, dtype and layout; for a quantized one, that and how it was quantized);
    None for a tensor not computed from the checkpoint."""
    return const.key() if isinstance(const, SlicedTensor) else None


def _placed_as(const: ir.TensorProtocol, like: ir.TensorProtocol) -> ir.TensorProtocol:
    """The bytes an early writer placed (`const`) as the graph's tensor `like`: its name and shape
    (a packed QMoE weight's [E, N, K*bits/8] holds the same bytes as [E, N, K/block, block*bits/8])."""
    if isinstance(const, ir.ExternalTensor):
        return ir.ExternalTensor(const.location, const.offset, const.length, like.dtype, shape=like.shape,
                                 name=like.name, base_dir=const.base_dir)
    return ir.tensor(const.numpy().reshape(like.shape.numpy()), name=like.name)


def write_external_data(graph: ir.Graph, data_path: Path, early=None) -> int:
    """Write every initializer of at least INLINE_LIMIT bytes to `data_path` (layer by layer,
    4096-aligned, past the page cache: direct_file.py) and point it there; -> the file's size.
    Small ones get their values inline. With `early` (export/early_experts.py: the MoE tensors,
    being written from offset 0 since the trace began), the initializers it holds point at
    their bytes and the rest are written from `early.rest_start` meanwhile; if it holds one
    that no initializer is, it is stopped and the file written from the start without it (no
    unused bytes)."""
    def layer_key(value: ir.Value) -> int:
        const = value.const_value
        layer = const.layer if isinstance(const, SlicedTensor) else None
        return -1 if layer is None else layer

    values = sorted((v for v in graph.initializers.values() if v.const_value is not None), key=layer_key)
    found: dict[tuple, ir.Value] = {}
    if early is not None:
        for value in values:
            key = recipe_key(value.const_value)
            if key in early.planned and key not in found:
                found[key] = value
        if len(found) != len(early.planned):
            early.cancel()
            found = {}
    done = {id(value) for value in found.values()}
    rest = [(value, value.const_value) for value in values if id(value) not in done]
    with DirectFile(data_path, start=early.rest_start if found else None) as data:
        placed = append_tensors(data, rest, data_path)
    if found:
        for key, const in early.finish().items():
            placed[found[key]] = _placed_as(const, found[key].const_value)
    for value, const in placed.items():
        value.const_value = const
    size = max((const.offset + const.length for const in placed.values() if isinstance(const, ir.ExternalTensor)),
               default=0)
    os.truncate(data_path, size)  # past the last tensor: the padding of a writer's last block
    return size
