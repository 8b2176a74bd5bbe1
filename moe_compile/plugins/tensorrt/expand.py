"""Expand every GroupedMoE node of an exported model into its six TensorRT plugin-stage nodes.

`moe-compile export --target tensorrt` leaves one `moe_compile::GroupedMoE` node per MoE layer.
TensorRT's AOT plugins run one kernel each and have no workspace, so before parsing, each node
becomes the six stage nodes of stages.py (op_type = plugin name, domain and plugin_namespace
moe_compile, plugin_version 1, aot = 1 so that the ONNX parser asks for the AOT implementation),
joined by the scratch tensors, all carrying the layer's attributes and its block_m, after a
Cast of the router logits to fp32 (what Route reads). An absent optional input becomes a
one-element initializer the kernel never reads.

Every node is checked before anything changes: a node the plugins cannot run is refused with
InvalidInput naming it, and the model is left as it was.
"""

from __future__ import annotations

import dataclasses
import functools

import onnx
from onnx import helper

from moe_compile.errors import InvalidInput
from moe_compile.export.schema import DOMAIN, INPUTS, OP_TYPE
from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes
from moe_compile.dtypes import PRECISIONS, element_type
from moe_compile.plugins.grouped_moe.gpu_failures import REASON, failed_on_gpu

from .stages import (ATTRIBUTE_TYPES, NODE_INPUTS, NODE_OUTPUT, PLUGIN_NAMESPACE, PLUGIN_VERSION, STAGES, StageLayer,
                     engine_block_m)

_FLOAT_TYPES = {element_type(short=name).onnx: element_type(short=name).ort for name in PRECISIONS}
_PLUGIN_ATTRIBUTES = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": 1}


def expand_grouped_moe(model: onnx.ModelProto, *, max_tokens: int = 8192) -> onnx.ModelProto:
    """`model` with each GroupedMoE node replaced by its six stage nodes (changed in place and
    returned: the weights are not copied). block_m, which aligns and sizes the scratch tensors, is
    stages.engine_block_m for `max_tokens` tokens a call (the engine's largest), so that the GEMM
    stages can take any smaller BLOCK_M dividing it as a tactic, per optimization profile.
    A model without GroupedMoE nodes is returned as is."""
    graph = model.graph
    grouped = [node for node in graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE]
    if not grouped:
        return model
    shapes = _static_shapes(graph)
    layers = [_checked_layer(node, shapes, max_tokens) for node in grouped]  # all checks before any change
    register_stage_schemas()
    expanded = []
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            layer, dtype = layers.pop(0)
            expanded += _stage_nodes(node, layer, dtype, graph)
        else:
            expanded.append(node)
    del graph.node[:]
    graph.node.extend(expanded)
    return model


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, element type) for initializers and fully static graph inputs / value infos."""
    shapes = {init.name: (tuple(init.dims), init.data_type) for init in graph.initializer}
    for info in (*graph.input, *graph.value_info):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if info.name not in shapes and tensor.HasField("shape") and None not in dims:
            shapes[info.name] = (tuple(dims), tensor.elem_type)
    return shapes


def _attribute_values(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}


def _checked_layer(node: onnx.NodeProto, shapes: dict, max_tokens: int) -> tuple[StageLayer, int]:
    """(the node's StageLayer, its weights' ONNX element type), or InvalidInput naming the node."""
    def refuse(why: str) -> InvalidInput:
        return InvalidInput(f"node '{node.name}': {why}")

    inputs = dict(zip(INPUTS, node.input, strict=False))
    for name in ("w_gate_up", "w_down"):
        if not inputs.get(name) or inputs[name] not in shapes or len(shapes[inputs[name]][0]) != 3:
            raise refuse(f"{name} needs a static 3-d shape (an initializer or a typed graph input)")
    (experts, two_inter, hidden), dtype = shapes[inputs["w_gate_up"]]
    if shapes[inputs["w_down"]][0] != (experts, hidden, two_inter // 2) or two_inter % 2:
        raise refuse(f"w_down {shapes[inputs['w_down']][0]} does not match w_gate_up {(experts, two_inter, hidden)}")
    if two_inter * hidden >= 2 ** 31:  # stride_we, which TensorRT passes as an int32 (the kernels widen the products)
        raise refuse(f"one expert's gate_up matrix has {two_inter * hidden} elements; the plugins take at most 2^31 - 1")
    if dtype not in _FLOAT_TYPES:
        raise refuse(f"weights of ONNX element type {dtype}; the plugins take float32, float16 or bfloat16")
    values = _attribute_values(node)
    fields = {f.name: f for f in dataclasses.fields(GroupedMoEAttributes)}
    if "top_k" not in values:
        raise refuse("no top_k attribute")
    try:
        attrs = GroupedMoEAttributes(**{name: bool(value) if fields[name].type == "bool" else value
                                        for name, value in values.items() if name in fields})
        attrs.validate(experts)
    except (InvalidInput, TypeError) as exc:
        raise refuse(str(exc)) from exc
    if failed_on_gpu(attrs):
        raise refuse(f"{REASON}; not built into an engine until that is understood")
    block_m = engine_block_m(experts, attrs.top_k, max_tokens)
    present = {name: bool(inputs.get(name)) for name in ("score_bias", "b_gate_up", "b_down")}
    return StageLayer(attrs, experts, hidden, two_inter // 2, block_m, has_score_bias=present["score_bias"],
                      has_gate_up_bias=present["b_gate_up"], has_down_bias=present["b_down"]), dtype


def _stage_nodes(node: onnx.NodeProto, layer: StageLayer, dtype: int, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    names = {name: value for name, value in zip(INPUTS, node.input, strict=False) if value}
    for name in NODE_INPUTS:
        if name not in names:  # an absent optional input: a stand-in the kernel never reads
            names[name] = f"{node.name}/{name}_absent"
            graph.initializer.append(helper.make_tensor(names[name], dtype, [1], [0]))
    names[NODE_OUTPUT] = node.output[0]
    # The Route plugin reads fp32 router logits (stages.py); a no-op where they already are.
    logits = names["router_logits"]
    names["router_logits"] = f"{node.name}/router_logits_fp32"
    nodes = [helper.make_node("Cast", [logits], [names["router_logits"]], name=f"{node.name}/CastRouterLogits",
                              to=onnx.TensorProto.FLOAT)]
    attributes = {**layer.node_attributes(), **_PLUGIN_ATTRIBUTES}
    for stage in STAGES:
        tensor = {name: names.get(name, f"{node.name}/{name}") for name in (*stage.inputs, *stage.outputs)}
        nodes.append(helper.make_node(stage.plugin, [tensor[n] for n in stage.inputs],
                                      [tensor[n] for n in stage.outputs], name=f"{node.name}/{stage.plugin}",
                                      domain=PLUGIN_NAMESPACE, **attributes))
    return nodes


@functools.cache
def register_stage_schemas() -> None:
    """ONNX schemas of the six stage ops, so that onnx.checker accepts an expanded model."""
    from onnx.defs import OpSchema, register_schema

    kinds = {int: OpSchema.AttrType.INT, float: OpSchema.AttrType.FLOAT, str: OpSchema.AttrType.STRING}
    attributes = [OpSchema.Attribute(name, kinds[kind], "see plugins/tensorrt/stages.py")
                  for name, kind in ATTRIBUTE_TYPES.items()]
    attributes += [OpSchema.Attribute(name, kinds[type(value)], "TensorRT plugin lookup", required=False)
                   for name, value in _PLUGIN_ATTRIBUTES.items()]
    layer = StageLayer(GroupedMoEAttributes(top_k=1), experts=1, hidden=1, inter=1, block_m=16)
    for stage in STAGES:
        launch = layer.launch(stage, 1, fp32=False)

        def parameters(tensors: dict) -> list:
            return [OpSchema.FormalParameter(name, "T" if dtype == "act" else element_type(torch=dtype).ort)
                    for name, (_, dtype) in tensors.items()]

        uses_act = any(dtype == "act" for _, dtype in (*launch.inputs.values(), *launch.outputs.values()))
        register_schema(OpSchema(
            stage.plugin, PLUGIN_NAMESPACE, int(PLUGIN_VERSION),
            doc=f"Stage '{stage.launch}' of moe-compile's grouped MoE, one TensorRT AOT plugin (Triton kernel "
                f"{stage.kernel}).",
            inputs=parameters(launch.inputs), outputs=parameters(launch.outputs),
            type_constraints=[("T", list(_FLOAT_TYPES.values()), "activations")] if uses_act else [],
            attributes=attributes))
