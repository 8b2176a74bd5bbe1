"""Nodes inside nodes: an ONNX graph's If branches (the attentions' prompt switch, the sorted
experts, the split by input length) hold nodes that passes over the graph must reach too. On
NodeProtos; onnx_ir graphs have `onnx_ir.traversal.RecursiveGraphIterator`."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

from onnx import AttributeProto, helper

THEN, ELSE = "then_branch", "else_branch"


def subgraphs(node) -> list:
    """The GraphProtos held by `node`'s attributes (an If's two branches, a Loop's body)."""
    graphs = []
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def branch(node, name: str):
    """An If node's branch `name` (THEN or ELSE), or None if `node` is not an If."""
    if node.op_type != "If":
        return None
    return next((attr.g for attr in node.attribute if attr.name == name), None)


def all_nodes(nodes: Iterable) -> Iterator:
    """`nodes` and, after each, the nodes of its subgraphs, depth first."""
    for node in nodes:
        yield node
        for graph in subgraphs(node):
            yield from all_nodes(graph.node)


def all_graphs(graph) -> Iterator:
    """`graph` and every graph inside its nodes, depth first."""
    yield graph
    for node in graph.node:
        for inner in subgraphs(node):
            yield from all_graphs(inner)


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


def inlined(switch, name: str) -> tuple[list, list]:
    """What an If computes when it takes branch `name`, as nodes of the graph around it: (the
    branch's nodes writing the If's outputs, the branch's initializers)."""
    taken = branch(switch, name)
    produced = {value for node in taken.node for value in node.output}
    nodes = renamed(taken.node, {output.name: mine for output, mine in zip(taken.output, switch.output)
                                 if output.name in produced})
    for output, mine in zip(taken.output, switch.output):
        if output.name not in produced:  # the branch hands on a value of the graphs around it
            nodes.append(helper.make_node("Identity", [output.name], [mine], name=f"{mine}.taken"))
    return nodes, copy.deepcopy(list(taken.initializer))


def outer_reads(nodes: Iterable) -> set[str]:
    """The values `nodes` (and their subgraphs) read that they neither compute nor hold."""
    produced, reads = set(), set()
    for node in all_nodes(nodes):
        for graph in subgraphs(node):
            produced |= {init.name for init in graph.initializer}
        reads |= {name for name in node.input if name and name not in produced}
        produced |= set(node.output)
    return reads


def drop_unread_initializers(graph) -> None:
    """Drop the initializers no node of `graph` (branches included) reads and no output names, with
    their value_info: what a rewrite left behind, which ONNX Runtime would otherwise announce, with
    a warning each, every time a session starts."""
    read = outer_reads(graph.node) | {output.name for output in graph.output}
    dropped = {init.name for init in graph.initializer} - read
    for kind in (graph.initializer, graph.value_info):  # the trace's type of a dropped one goes too
        kept = [entry for entry in kind if entry.name not in dropped]
        del kind[:]
        kind.extend(kept)


def live(nodes: list, outputs: Iterable[str]) -> list:
    """The nodes of `nodes` (in order) that `outputs` depend on; a branch's reads of the graphs
    around it count as its If's inputs."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.output):
            kept.append(node)
            needed |= {name for name in node.input if name} | outer_reads([node])
    return kept[::-1]
