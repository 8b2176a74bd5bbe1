"""Lookup tables (the token embedding) kept at the checkpoint's precision in an fp32 export.

A weight that only Gather reads is only ever looked up row by row. Stored as the checkpoint
stores it (bf16 or fp16) and cast to fp32 after the lookup, it gives the same numbers (the cast
is exact) in half the bytes of the file. For a model with a large vocabulary that is much of an
int4 export: Qwen3-30B-A3B's embedding (151,936 x 2048) is 1.24 GB in fp32, 0.62 GB as stored.
(ONNX Runtime maps an external table from the file rather than copying it, so its anonymous
memory does not change; the page cache holds the rows looked up.) ONNX Runtime's CPU provider
runs Gather on bf16 and fp16 tables. A table that anything else reads (an lm_head tied to the
embedding) stays fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch

from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.weight_sources import WeightSources
from moe_compile.dtypes import element_type

from .streamed_weights import StreamedTensor

_NARROW = ("bf16", "fp16")  # the stored dtypes a table is kept in (moe_compile/dtypes.py's short names)


def checkpoint_dtypes(model: torch.nn.Module, moe_model: MoEModel, prefix: str) -> Callable[[str], torch.dtype | None]:
    """initializer name -> the dtype its checkpoint tensor is stored in (None: not a checkpoint tensor)."""
    sources = WeightSources(model, moe_model)
    return lambda name: sources.stored_dtype(name.removeprefix(prefix)) if name.startswith(prefix) else None


def narrow_lookup_tables(graph: ir.Graph, stored_dtype: Callable[[str], torch.dtype | None]) -> list[str]:
    """Store every fp32 initializer that only Gather reads (as its table) in its checkpoint dtype
    where that is bf16 or fp16, each Gather's output cast back to fp32 -> the initializers narrowed."""
    narrowed = []
    for table in list(graph.initializers.values()):
        uses = table.uses()
        if table.dtype != ir.DataType.FLOAT or not uses or table.name in {v.name for v in graph.outputs}:
            continue
        if any(use.node.domain or use.node.op_type != "Gather" or use.idx != 0 for use in uses):
            continue
        dtype = stored_dtype(table.name)
        stored = element_type(torch=dtype) if dtype is not None else None
        if stored is None or stored.short not in _NARROW:
            continue
        table.const_value = _narrowed(table.const_value, dtype)
        table.dtype = ir.DataType(stored.onnx)
        for gather in {use.node for use in uses}:
            _cast_output_to_float(graph, gather, table.dtype)
        narrowed.append(table.name)
    return narrowed


def _narrowed(values: ir.TensorProtocol, dtype: torch.dtype) -> ir.TensorProtocol:
    if isinstance(values, StreamedTensor):  # nothing read: the recipe casts to the stored dtype instead
        return StreamedTensor(replace(values.recipe, dtype=dtype), values.name)
    array = torch.from_numpy(np.ascontiguousarray(values.numpy())).to(dtype)
    if dtype == torch.bfloat16:
        return ir.tensor(array.view(torch.int16).numpy().view(ml_dtypes.bfloat16), name=values.name)
    return ir.tensor(array.numpy(), name=values.name)


def _cast_output_to_float(graph: ir.Graph, gather: ir.Node, stored: ir.DataType) -> None:
    """gather -> y  becomes  gather -> y.stored -> Cast(to=FLOAT) -> y (the name its readers know)."""
    output = gather.outputs[0]
    name = output.name
    output.name, output.dtype = f"{name}.stored", stored
    cast = ir.node("Cast", inputs=[output], attributes={"to": int(ir.DataType.FLOAT)}, name=f"{gather.name}.to_float")
    graph.insert_after(gather, cast)
    cast_output = cast.outputs[0]
    ir.convenience.replace_all_uses_with(output, cast_output, replace_graph_outputs=True)
    cast.replace_input_with(0, output)  # the line above rewired the cast's own input too
    cast_output.name, cast_output.dtype, cast_output.shape = name, ir.DataType.FLOAT, output.shape
