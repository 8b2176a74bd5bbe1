"""The TensorRT target: the GroupedMoE node as it is, marked for TensorRT's plugin lookup.

TensorRT's ONNX parser turns a node it does not know into a plugin layer: the plugin name is
the op_type, the namespace comes from `plugin_namespace` (else the node's domain), the
version from `plugin_version`; every other attribute becomes a plugin field.
"""

from __future__ import annotations

import onnxscript

from moe_compile.export.schema import (
    DOMAIN,
    OP_TYPE,
    VERSION,
    attribute_values,
    register_schema,
)
from moe_compile.grouped_moe_op import GroupedMoEAttributes

PLUGIN_VERSION = "1"


def lower_to_plugin_node(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias, *,
                         attrs: GroupedMoEAttributes, lowering):
    register_schema()
    opset = onnxscript.values.Opset(DOMAIN, VERSION)
    node = getattr(opset, OP_TYPE)
    return node(hidden, router_logits, w_gate_up, w_down, b_gate_up, b_down, score_bias,
                plugin_namespace=DOMAIN, plugin_version=PLUGIN_VERSION, **attribute_values(attrs))
