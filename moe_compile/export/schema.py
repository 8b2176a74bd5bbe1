"""The GroupedMoE node's ONNX schema, so onnx.checker and shape inference accept it.

Attribute names and types come from `GroupedMoEAttributes`, the one place they are written.
"""

from __future__ import annotations

import dataclasses
import functools

from moe_compile.dtypes import PRECISIONS, element_type
from moe_compile.grouped_moe_op import GroupedMoEAttributes

DOMAIN = "moe_compile"
OP_TYPE = "GroupedMoE"
VERSION = 1
INPUTS = ("hidden", "router_logits", "w_gate_up", "w_down", "b_gate_up", "b_down", "score_bias")
OPTIONAL_INPUTS = ("b_gate_up", "b_down", "score_bias")
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")  # set by the tensorrt target
FLOAT_TYPES = tuple(element_type(short=name).ort for name in PRECISIONS)  # tensor(float), ...


def attribute_values(attrs: GroupedMoEAttributes) -> dict:
    """Attributes as ONNX stores them (booleans as 0/1 ints)."""
    return {name: int(value) if isinstance(value, bool) else value for name, value in attrs.as_dict().items()}


@functools.cache
def register_schema() -> None:
    from onnx.defs import OpSchema
    from onnx.defs import register_schema as register

    types = {int: OpSchema.AttrType.INT, bool: OpSchema.AttrType.INT, float: OpSchema.AttrType.FLOAT,
             str: OpSchema.AttrType.STRING}
    hints = {"int": int, "bool": bool, "float": float, "str": str}
    attributes = [OpSchema.Attribute(f.name, types[hints[f.type]], f"see GroupedMoEAttributes.{f.name}")
                  for f in dataclasses.fields(GroupedMoEAttributes)]
    attributes += [OpSchema.Attribute(name, OpSchema.AttrType.STRING, f"TensorRT plugin lookup: {name}", required=False)
                   for name in PLUGIN_ATTRIBUTES]
    optional = OpSchema.FormalParameterOption.Optional
    # The router logits may be fp32 in a 16-bit model (DeepSeek's routers run in fp32): type L.
    types = {name: "L" if name == "router_logits" else "T" for name in INPUTS}
    inputs = [OpSchema.FormalParameter(name, types[name], param_option=optional) if name in OPTIONAL_INPUTS
              else OpSchema.FormalParameter(name, types[name]) for name in INPUTS]
    register(OpSchema(
        OP_TYPE, DOMAIN, VERSION,
        doc="moe-compile's grouped MoE: routing + the chosen experts' gated MLPs + weighted combine "
            "(moe_compile/grouped_moe_op/reference.py defines it).",
        inputs=inputs, outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", list(FLOAT_TYPES), "float tensors"), ("L", list(FLOAT_TYPES), "router logits")],
        attributes=attributes))
