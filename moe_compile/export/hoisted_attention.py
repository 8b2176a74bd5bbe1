"""The grouped attention taken out of the prompt switch's If, so that decode steps run it in the main graph.

The trace writes each attention of an ONNX Runtime export as `If(whole causal prompt,
GroupQueryAttention, the grouped form)` (export/grouped_attention.py). Decode steps, short, padded
and cached prompts take the grouped branch, and in ONNX Runtime 1.32 the same products run slower
inside a branch than in the main graph: after a 2048-token prompt, a decode step of onnx_speed.py's
model spent 125 against 98 us a layer in the scores' FusedMatMul and ~90 us more in the values'
MatMul (its profiler; one thread or two alike), and decode steps were 2-11 % slower than an export
without the switch; with the grouped form out of the branch, 0-3 % (fresh sessions; docs/export.md,
benchmarks/prompt_attention_ab.py).

So each such If becomes:

    rows    = Where(kernel, 0, S)                       S: the query's length
    grouped = the grouped branch's nodes, in the main graph, on the first `rows` query rows
              (and mask rows): all of them, or none when the kernel runs
    kernel  = If(kernel, GroupQueryAttention, an empty [B, 0, H, D])
    output  = Concat(grouped, kernel) along the sequence

The outputs are the If's, element for element; a long prompt computes the grouped attention on no
rows (its scores are [.., 0, S]) and the kernel, everything else the grouped attention and an If
that runs one empty Slice.
"""

from __future__ import annotations

from onnx import TensorProto, helper

from .lowering.prompt_attention import is_attention_switch
from .subgraphs import ELSE, THEN, branch, outer_reads, renamed

_QUERY, _KEY, _VALUE = range(3)  # GroupQueryAttention's inputs
_ZERO, _SEQUENCE_AXIS, _ROWS_AXIS = "hoisted_attention.zero", "hoisted_attention.sequence_axis", "hoisted_attention.rows_axis"


def hoist_grouped_attention(graph, outer_constants: frozenset[str] = frozenset()) -> int:
    """In place, for every If of `graph` (a GraphProto: the main graph, or the prompt body of a
    graph split by length, whose graph around it holds `outer_constants`) that is an attention's
    prompt switch -> how many."""
    constants = set(outer_constants) | {init.name for init in graph.initializer}
    constants |= {name for node in graph.node if node.op_type == "Constant" for name in node.output}
    nodes, hoisted, prefixes = [], 0, {}
    for node in graph.node:
        if not is_attention_switch(node):
            nodes.append(node)
            continue
        nodes += _hoisted(node, branch(node, THEN), branch(node, ELSE), constants, graph, prefixes)
        hoisted += 1
    if hoisted:
        graph.initializer.extend([helper.make_tensor(_ZERO, TensorProto.INT64, [1], [0]),
                                  helper.make_tensor(_SEQUENCE_AXIS, TensorProto.INT64, [1], [1]),
                                  helper.make_tensor(_ROWS_AXIS, TensorProto.INT64, [1], [-2])])
        del graph.node[:]
        graph.node.extend(nodes)
    return hoisted


def _hoisted(switch, kernel, grouped, constants: set[str], graph, prefixes: dict) -> list:
    """The nodes that replace `switch`. `prefixes` ({(flag, mask): the prefix of the first layer's
    values}) shares that layer's rows, sliced mask and query shape among the layers, so that ONNX
    Runtime computes what the layers derive from them once, as it does for the attention traced
    without a switch."""
    (output,) = switch.output
    flag = switch.input[0]
    query, key, value = (_packed_operand(kernel, index) for index in (_QUERY, _KEY, _VALUE))
    others = outer_reads(grouped.node) - {init.name for init in grouped.initializer} - constants - {query, key, value}
    if len(others) > 1:
        raise RuntimeError(f"{switch.name}: the grouped attention reads {sorted(others)}; expected at most its mask")
    mask = next(iter(others), None)
    p = f"{output}.hoisted"
    nodes = []
    source = mask if mask is not None else query  # [.., S, T] or [B, H, S, D]: the rows are its axis -2
    first = prefixes.setdefault((flag, source), p)
    if first == p:
        nodes += [helper.make_node("Shape", [source], [f"{p}.length"], name=f"{p}.length", start=-2, end=-1),
                  helper.make_node("Where", [flag, _ZERO, f"{p}.length"], [f"{p}.rows"], name=f"{p}.rows")]
        if mask is not None:
            nodes.append(helper.make_node("Slice", [mask, _ZERO, f"{p}.rows", _ROWS_AXIS], [f"{p}.mask"],
                                          name=f"{p}.mask"))
    nodes.append(helper.make_node("Slice", [query, _ZERO, f"{first}.rows", _ROWS_AXIS], [f"{p}.query"], name=f"{p}.query"))
    names = {name: f"{p}/{name}" for name in [init.name for init in grouped.initializer]
             + [name for inner in grouped.node for name in inner.output]}
    names |= {query: f"{p}.query", grouped.output[0].name: f"{p}.grouped"}
    if mask is not None:
        names[mask] = f"{first}.mask"
    for init in grouped.initializer:
        init.name = names[init.name]
    graph.initializer.extend(grouped.initializer)
    for node in (moved := renamed(grouped.node, names)):
        if node.op_type == "Shape" and node.input[0] == f"{p}.query" and _axes(node) in ((0, 1), (2, 3)):
            node.input[0] = f"{first}.query"  # batch and rows: the same in every layer, so computed once
    nodes += moved
    elem_type = grouped.output[0].type.tensor_type.elem_type
    empty = helper.make_graph(
        [helper.make_node("Slice", [f"{p}.grouped", _ZERO, _ZERO, _SEQUENCE_AXIS], [f"{p}.empty"], name=f"{p}.empty")],
        f"{p}.not_taken", [], [helper.make_tensor_value_info(f"{p}.empty", elem_type, None)])
    # the branches' outputs differ in length: declared without a shape, or ONNX Runtime plans buffers by it
    kernel.output[0].type.tensor_type.ClearField("shape")
    nodes += [helper.make_node("If", [flag], [f"{p}.kernel"], name=switch.name or p, then_branch=kernel,
                               else_branch=empty),
              helper.make_node("Concat", [f"{p}.grouped", f"{p}.kernel"], [output], name=f"{p}.concat", axis=1)]
    return nodes


def _packed_operand(kernel, index: int) -> str:
    """The outer value behind GroupQueryAttention's input `index`: [B, N, S, D] packed by a Transpose
    and a Reshape (lowering/prompt_attention.py)."""
    producers = {name: node for node in kernel.node for name in node.output}
    (attention,) = [node for node in kernel.node if node.op_type == "GroupQueryAttention"]
    name = attention.input[index]
    for op_type in ("Reshape", "Transpose"):
        node = producers.get(name)
        if node is None or node.op_type != op_type:
            raise RuntimeError(f"GroupQueryAttention input {index} is not a packed [B, N, S, D] value")
        name = node.input[0]
    return name


def _axes(shape_node) -> tuple[int | None, int | None]:
    """A Shape node's (start, end) attributes."""
    attributes = {attr.name: attr.i for attr in shape_node.attribute}
    return attributes.get("start", 0), attributes.get("end")
