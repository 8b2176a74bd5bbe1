"""An ONNX file's graph with its arbitrary value names taken out, for comparing two exports of one
model that traced it in different pieces (export/repeated_layers.py): torch.onnx numbers the
values it names (val_412, add_905) in trace order, so the same graph traced otherwise has other
names. Nothing else is taken out: node order, ops, attributes, which value feeds which input, and
a branch's output and value_info types."""

from __future__ import annotations

import hashlib

import onnx
from onnx import numpy_helper


def constant_name(tensor: onnx.TensorProto) -> str:
    """A tensor named by what it holds (its dtype, shape and bytes)."""
    array = numpy_helper.to_array(tensor)
    return f"constant {array.dtype} {array.shape} {hashlib.sha1(array.tobytes()).hexdigest()}"


def canonical_nodes(graph: onnx.GraphProto, names: dict[str, str]) -> list[tuple]:
    """Each node as (domain, op_type, inputs, outputs, attributes) with values renamed: the model's
    weights (`model.` names) and the graph's inputs and outputs keep their names, other
    initializers and tensor attributes are named by content, every other value by the order in
    which the graph defines it. Subgraphs likewise, seeing the names of the graph around them."""
    for init in graph.initializer:
        names[init.name] = init.name if init.name.startswith("model.") else constant_name(init)
    nodes = []
    for node in graph.node:
        attributes = []
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                value = _canonical_subgraph(attribute.g, dict(names))
            elif attribute.type == onnx.AttributeProto.TENSOR:
                value = constant_name(attribute.t)
            else:
                value = str(onnx.helper.get_attribute_value(attribute))
            attributes.append((attribute.name, value))
        inputs = [names.get(name, name) for name in node.input]
        for name in node.output:
            names.setdefault(name, f"value {len(names)}")
        nodes.append((node.domain, node.op_type, inputs, [names[name] for name in node.output], attributes))
    return nodes


def _canonical_subgraph(graph: onnx.GraphProto, names: dict[str, str]) -> tuple:
    """A branch: its nodes, then its outputs and value_info with their types, both under canonical
    names (value_info sorted: its order means nothing, and onnx_ir's round trip changes it)."""
    nodes = canonical_nodes(graph, names)
    typed = [(names.get(value.name, value.name), str(value.type)) for value in graph.output]
    return nodes, typed, sorted((names.get(info.name, info.name), str(info.type)) for info in graph.value_info)


def canonical_graph(model: onnx.ModelProto) -> tuple[list[tuple], dict[str, str]]:
    """(canonical nodes, {initializer name: its canonical name})."""
    names = {value.name: value.name for value in (*model.graph.input, *model.graph.output)}
    nodes = canonical_nodes(model.graph, names)
    return nodes, {init.name: names[init.name] for init in model.graph.initializer}
