"""Nodes inside nodes: an ONNX graph's If branches (the attentions' prompt switch, the sorted
experts, a quantized file's split by input length) hold nodes that passes over the graph must
reach too. On NodeProtos; onnx_ir graphs have `onnx_ir.traversal.RecursiveGraphIterator`."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

from onnx import AttributeProto


def subgraphs(node) -> list:
    """The GraphProtos held by `node`'s attributes (an If's two branches, a Loop's body)."""
    graphs = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def all_nodes(nodes: Iterable) -> Iterator:
    """`nodes` and, after each, the nodes of its subgraphs, depth first."""
    for node in nodes:
        yield node
        for graph in subgraphs(node):
            yield from all_nodes(graph.node)


def renamed(nodes: Iterable, names: Mapping[str, str]) -> list:
    """Copies of `nodes` with the values in `names` renamed wherever they are read or written, in
    their subgraphs too (a branch reads the values of the graphs around it by name)."""
    copies = copy.deepcopy(list(nodes))
    for node in all_nodes(copies):
        node.output[:] = [names.get(value, value) for value in node.output]
        node.input[:] = [names.get(value, value) for value in node.input]
        for output in (output for graph in subgraphs(node) for output in graph.output):
            output.name = names.get(output.name, output.name)
    return copies
