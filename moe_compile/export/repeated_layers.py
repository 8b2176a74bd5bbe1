"""Trace one decoder layer of each kind and repeat it in the ONNX graph for the layers like it.

Tracing (torch.export, then torch.onnx's decomposition, both fake-tensor dispatch with symbolic
sizes) costs about a second of one core per decoder layer, whatever the layer's weights weigh:
3.7 s for one Qwen3-30B-A3B-shaped layer, 6.5 s for four (docs/export.md). Layers whose modules
are alike give the same ONNX nodes up to their weights, their KV cache and the residual stream
they read and write, so a streamed export traces the layers up to the last one that is the first
of its kind (`plan_repeats`: by `layer_signature`, never from layer 0, which computes the shapes,
masks and constants that every layer shares) and repeats those for the rest (`repeat_layers`):
every node of the template layer is copied with the layer's own initializers (bound to its own
weights afterwards, by name), its own past and present, and the hidden state of the layer before.

The static top-k differs per layer under a plan. Where a layer's GroupedMoE lowering holds k in
one node attribute alone (com.microsoft.MoE or QMoE routed in the op, TensorRT's plugin node), layers of
different k are one kind and the copy's attribute is set to the layer's k; otherwise (routing in
standard ops: TopK's K and the shapes that follow it) the layer's k is part of its kind.

The in-memory export (`export_onnx(streamed=False)`) traces every layer and is what this is
tested against: the same nodes, weights and outputs on every architecture
(tests/export/test_streamed_export.py). A graph laid out otherwise raises `LayerCopyError`, and the
exporter then traces every layer.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
from collections.abc import Iterator

import onnx_ir as ir
import torch
from onnx_ir.tensor_adapters import TorchTensor

from moe_compile.compiler.rewrite import StaticTopKMoE

from .decoder import past_names, present_names
from .lowering import LoweringReport, choose_lowering
from .lowering.ort_support import MS_DOMAIN
from .schema import DOMAIN, OP_TYPE

LAYERS = "model.model.layers"  # the decoder layers' scope in the traced wrapper (export/decoder.py)
_SCOPES = "pkg.torch.onnx.name_scopes"  # torch.onnx's node metadata: the module path, outermost first
_FX_NODE = "pkg.torch.onnx.fx_node"  # ... and the FX node it came from (exporter._name_moe_outputs reads it)
# (domain, op_type) of the nodes that carry a GroupedMoE's k, and the attribute that holds it
_TOP_K_ATTRIBUTES = {(MS_DOMAIN, "MoE"): "k", (DOMAIN, OP_TYPE): "top_k"}
_PLAIN = (bool, int, float, str, type(None))


class LayerCopyError(RuntimeError):
    """The traced graph is not laid out as `repeat_layers` expects (the exporter then traces every layer)."""


@dataclasses.dataclass(frozen=True)
class LayerRepeats:
    """Trace layers [0, traced); layer j >= traced is a copy of layer templates[j] (< traced)."""

    traced: int
    templates: dict[int, int]


def layer_signature(layer: torch.nn.Module, top_k_in_attribute: bool) -> tuple:
    """Everything about a decoder layer that can shape its graph, its index aside: each module's
    class and plain attributes (sliding windows, attention types, routing attributes), and every
    parameter's and buffer's name, shape and dtype. A GroupedMoE's top-k is left out where its
    lowering holds k in one attribute (`top_k_in_attribute`), which the copy sets."""
    parts = []
    for name, module in layer.named_modules():
        state = []
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or key in ("training", "layer_idx"):
                continue
            if isinstance(module, StaticTopKMoE) and key == "attributes" and top_k_in_attribute:
                value = dataclasses.replace(value, top_k=0)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                state.append((key, repr(value)))
            elif isinstance(value, _PLAIN) or (isinstance(value, tuple | list)
                                                and all(isinstance(item, _PLAIN) for item in value)):
                state.append((key, repr(value)))
        parts.append((name, type(module).__qualname__, tuple(state)))
    parts += [(name, tuple(t.shape), str(t.dtype)) for name, t in (*layer.named_parameters(), *layer.named_buffers())]
    return tuple(parts)


def plan_repeats(model: torch.nn.Module, target: str, quantized: bool) -> LayerRepeats | None:
    """Which layers of `model` (a rewritten skeleton) to trace and which to copy; None if every
    layer has to be traced (no layer after the first is like an earlier one but layer 0)."""
    layers = list(model.get_submodule("model.layers"))
    top_k_in_attribute = [_top_k_in_attribute(layer, target, quantized) for layer in layers]
    signatures = [layer_signature(layer, in_attribute) for layer, in_attribute in zip(layers, top_k_in_attribute)]
    first_of_kind: dict[tuple, int] = {}
    templates = {}
    for index in range(1, len(layers)):
        template = first_of_kind.setdefault(signatures[index], index)
        if template != index:
            templates[index] = template
    traced = next((j for j in range(1, len(layers) + 1) if all(i in templates for i in range(j, len(layers)))),
                  len(layers))
    templates = {j: t for j, t in templates.items() if j >= traced}
    return LayerRepeats(traced, templates) if templates else None


def _top_k_in_attribute(layer: torch.nn.Module, target: str, quantized: bool) -> bool:
    """Whether the layer's GroupedMoE becomes a node that holds k in an attribute and nowhere else."""
    blocks = [m for m in layer.modules() if isinstance(m, StaticTopKMoE)]
    if not blocks:
        return False
    lowering = choose_lowering(target, blocks[0].attributes, has_score_bias=blocks[0].score_bias is not None,
                               quantized=quantized)
    return lowering.routing == "in the op" and lowering.lowered_to in ("com.microsoft.MoE", "com.microsoft.QMoE",
                                                                      "plugin")


@contextlib.contextmanager
def traced_prefix(model: torch.nn.Module, repeats: LayerRepeats) -> Iterator[None]:
    """While inside, `model` runs (and traces) its first `repeats.traced` decoder layers only."""
    inner, config = model.get_submodule("model"), model.config
    layers, count = inner.layers, config.num_hidden_layers
    inner.layers = torch.nn.ModuleList(list(layers)[: repeats.traced])  # the same modules, the same names
    config.num_hidden_layers = repeats.traced
    try:
        yield
    finally:
        inner.layers, config.num_hidden_layers = layers, count


def repeat_layers(graph: ir.Graph, model: torch.nn.Module, repeats: LayerRepeats, top_k: dict[int, int],
                  report: LoweringReport) -> None:
    """In place: `graph`, traced from `model` with `repeats.traced` layers, gets the remaining
    layers as copies of their templates, in order, between the last traced layer and the final
    norm; their initializers hold `model`'s own tensors (bound to the checkpoint afterwards by
    name), their GroupedMoE nodes `top_k[layer]`, and `report` gets their lowering."""
    members = _layer_members(graph, repeats.traced)
    hidden = _hidden_output(members[repeats.traced - 1])
    tail_uses = [(node, index) for node, index in hidden.uses() if node not in members[repeats.traced - 1]]
    anchor = min((node for node, _ in tail_uses), key=list(graph).index)
    tensors = {f"model.{name}": tensor for name, tensor in (*model.named_parameters(), *model.named_buffers())}
    entries = {entry["layer"]: entry for entry in report.layers}
    # each template's hidden state in and out, found before the graph changes
    ends = {template: (_hidden_input(members[template], members[template - 1]), _hidden_output(members[template]))
            for template in set(repeats.templates.values())}
    for layer, template in sorted(repeats.templates.items()):
        nodes = members[template]
        hidden_in, hidden_out = ends[template]
        copy = _LayerCopy(graph, template, layer, tensors)
        copy.values[hidden_in] = hidden
        new_nodes = [copy.node(node) for node in nodes]
        if template in entries:
            if top_k[layer] != top_k[template]:
                _set_top_k(new_nodes, top_k[layer])
            report.layers.append({**entries[template], "layer": layer, "top_k": top_k[layer]})
        graph.insert_before(anchor, new_nodes)
        copy.add_outputs()
        hidden = copy.values[hidden_out]
    for node, index in tail_uses:
        node.replace_input_with(index, hidden)


def _layer_of(node: ir.Node) -> int | None:
    scopes = ast.literal_eval(node.metadata_props.get(_SCOPES, "[]"))
    for scope in scopes:
        match = re.fullmatch(re.escape(LAYERS) + r"\.(\d+)", scope)
        if match:
            return int(match.group(1))
    return None


def _layer_members(graph: ir.Graph, traced: int) -> list[_NodeList]:
    """Per traced layer, its nodes in graph order: those torch.onnx scoped to the layer's module,
    and those outside any module that read the layer's past for that layer alone (the KV cache's
    update; not the shapes every layer reads)."""
    pasts = {name: index // 2 for index, name in enumerate(past_names(traced))}
    members: list[list[ir.Node]] = [[] for _ in range(traced)]
    for node in graph:
        layer = _layer_of(node)
        if layer is None:
            owners = {pasts[v.name] for v in node.inputs if v is not None and v.is_graph_input() and v.name in pasts}
            users = {_layer_of(user) for output in node.outputs for user, _ in output.uses()}
            layer = owners.pop() if len(owners) == 1 and users <= owners else None
        if layer is not None:
            members[layer].append(node)
    return [_NodeList(nodes) for nodes in members]


class _NodeList(list):
    """A layer's nodes in graph order, with set-speed membership (of the nodes in their subgraphs too:
    an If's branches read the layer's values)."""

    def __init__(self, nodes: list[ir.Node]) -> None:
        super().__init__(nodes)
        self._ids = {id(inner) for node in nodes for inner in (node, *_subgraph_nodes(node))}

    def __contains__(self, node) -> bool:
        return id(node) in self._ids


def _subgraph_nodes(node: ir.Node) -> Iterator[ir.Node]:
    for attr in node.attributes.values():
        for graph in ([attr.value] if attr.type == ir.AttributeType.GRAPH
                      else attr.value if attr.type == ir.AttributeType.GRAPHS else []):
            yield from ir.traversal.RecursiveGraphIterator(graph)


def _hidden_output(nodes: _NodeList) -> ir.Value:
    """The hidden state a layer hands on: the one value of its nodes read outside it that is not
    a graph output (its present key and value are)."""
    found = {output for node in nodes for output in node.outputs
             if not output.is_graph_output() and any(user not in nodes for user, _ in output.uses())}
    if len(found) != 1:
        raise LayerCopyError(f"a decoder layer hands on {len(found)} values, expected its hidden state alone: "
                           + ", ".join(sorted(value.name for value in found)))
    return found.pop()


def _hidden_input(nodes: _NodeList, before: _NodeList) -> ir.Value:
    """The hidden state a layer reads: the one value from the layer before it that is not a constant
    (layer 0 also computes shapes and constants that every layer reads)."""
    found = {value for node in nodes for value in node.inputs
             if value is not None and value.producer() is not None and value.producer() in before
             and value.producer().op_type != "Constant" and value.dtype is not None and value.dtype.is_floating_point()}
    if len(found) != 1:
        raise LayerCopyError(f"a decoder layer reads {len(found)} values from the layer before it, "
                           "expected its hidden state")
    return found.pop()


class _LayerCopy:
    """Copies of one template layer's nodes as decoder layer `layer`: the values the template owns
    (its outputs, initializers, past inputs) become the layer's; the values it shares stay."""

    def __init__(self, graph: ir.Graph, template: int, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        self.graph, self.template, self.layer, self.tensors = graph, template, layer, tensors
        self.values: dict[ir.Value, ir.Value] = {}
        self._prefix = f"{LAYERS}.{template}."
        for name, new_name in zip(past_names(template + 1)[-2:], past_names(layer + 1)[-2:]):
            old = _named(graph.inputs, name)
            self.values[old] = ir.Value(name=new_name, type=old.type, shape=old.shape.copy())

    def node(self, node: ir.Node) -> ir.Node:
        metadata = {key: re.sub(re.escape(self._prefix[:-1]) + r"\b", f"{LAYERS}.{self.layer}", value)
                    for key, value in node.metadata_props.items()}
        if _FX_NODE in metadata:  # "%name : ...": the FX node, named as the value it computes, renamed with it
            metadata[_FX_NODE] = re.sub(r"^%(\S+)", rf"%\1.layer{self.layer}", metadata[_FX_NODE])
        copied = ir.Node(node.domain, node.op_type, [self._input(value) for value in node.inputs],
                         [self._attribute(attr) for attr in node.attributes.values()], overload=node.overload,
                         num_outputs=len(node.outputs),
                         version=node.version, name=f"{node.name}.layer{self.layer}", metadata_props=metadata)
        for old, new in zip(node.outputs, copied.outputs):
            new.name, new.type = self._name(old), old.type
            new.shape = old.shape.copy() if old.shape is not None else None
            self.values[old] = new
        return copied

    def _attribute(self, attr: ir.Attr) -> ir.Attr:
        """`attr`, its subgraphs (an If's branches) copied: they read the layer's values."""
        if attr.type == ir.AttributeType.GRAPH:
            return ir.AttrGraph(attr.name, self._graph(attr.value))
        if attr.type == ir.AttributeType.GRAPHS:
            return ir.AttrGraphs(attr.name, [self._graph(graph) for graph in attr.value])
        return attr

    def _graph(self, graph: ir.Graph) -> ir.Graph:
        if graph.inputs or graph.initializers:
            raise LayerCopyError(f"cannot repeat a subgraph with inputs or initializers ({graph.name})")
        nodes = [self.node(node) for node in graph]
        return ir.Graph([], [self._input(value) for value in graph.outputs], nodes=nodes,
                        opset_imports=dict(graph.opset_imports), name=f"{graph.name}.layer{self.layer}")

    def add_outputs(self) -> None:
        """The layer's present key and value, after the graph outputs of the layers before it."""
        for name in present_names(self.template + 1)[-2:]:
            self.graph.outputs.append(self.values[_named(self.graph.outputs, name)])
        self.graph.inputs.extend(new for old, new in self.values.items() if old.is_graph_input())

    def _input(self, value: ir.Value | None) -> ir.Value | None:
        if value is None or value in self.values:
            return self.values.get(value)
        if value.is_initializer() and value.name.startswith(self._prefix):
            name = f"{LAYERS}.{self.layer}.{value.name.removeprefix(self._prefix)}"
            if name not in self.tensors:
                raise LayerCopyError(f"{name} is not a parameter or buffer of the model")
            copied = ir.Value(name=name, type=value.type, shape=value.shape.copy(),
                              const_value=TorchTensor(self.tensors[name], name=name))
            self.graph.register_initializer(copied)
            self.values[value] = copied
        return self.values.get(value, value)

    def _name(self, value: ir.Value) -> str:
        for kind in ("key", "value"):
            if value.name == f"present.{self.template}.{kind}":
                return f"present.{self.layer}.{kind}"
        return f"{value.name}.layer{self.layer}"


def _named(values, name: str) -> ir.Value:
    """The one graph input or output called `name`."""
    (value,) = [value for value in values if value.name == name]
    return value


def _set_top_k(nodes: list[ir.Node], top_k: int) -> None:
    carriers = [node for node in nodes if (node.domain, node.op_type) in _TOP_K_ATTRIBUTES]
    if len(carriers) != 1:
        raise LayerCopyError(f"a repeated MoE layer holds {len(carriers)} nodes with its top-k, expected one")
    (node,) = carriers
    name = _TOP_K_ATTRIBUTES[(node.domain, node.op_type)]
    node.attributes[name] = ir.AttrInt64(name, top_k)
