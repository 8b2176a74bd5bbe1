"""One GroupedMoE call as a standalone ONNX model, for op-level parity checks (fuzzing).

Exporting a module with torch.onnx costs seconds; a fuzz run needs hundreds of models. This
builds the same nodes the exporter would, in milliseconds: it calls the target's translation
(`lowering.translation`) under torch.onnx's own node recorder (the evaluator torch.onnx
installs when it calls a custom translation), makes the weights initializers as the exported
file has them, and runs the target's weight pass (`lowering.weight_pass`). What it leaves out
is what torch.onnx does around the op (tracing the module, graph-level optimisation); a test
checks that a torch.onnx export of one `StaticTopKMoE` computes the same as this model.

    inputs:       hidden [T, H], router_logits [T, E]   (T dynamic)
    initializers: w_gate_up, w_down (+ b_gate_up, b_down, score_bias when given)
    output:       out [T, H]
"""

from __future__ import annotations

import onnx
import torch

from moe_compile.dtypes import element_type
from moe_compile.grouped_moe_op import GroupedMoEAttributes
from moe_compile.grouped_moe_op.op import attribute_args

from .exporter import OPSET
from .lowering import LoweringReport, translation, weight_pass

_WEIGHT_NAMES = ("w_gate_up", "w_down", "b_gate_up", "b_down", "score_bias")


def grouped_moe_onnx(target: str, attrs: GroupedMoEAttributes, hidden_shape: tuple[int, int],
                     weights: dict[str, torch.Tensor | None], dtype: torch.dtype,
                     expert_halves: bool = False) -> onnx.ModelProto:
    """The ONNX model of one GroupedMoE call on `target`; `weights` by the op's argument names;
    `expert_halves`: com.microsoft.MoE's experts in halves, as `export --moe-prompts node` has them."""
    import onnx_ir as ir
    import onnxscript
    from onnx_ir.tensor_adapters import TorchTensor
    from onnxscript import evaluator
    from torch.onnx._internal.exporter import _building, _tensors

    opset = onnxscript.values.Opset("", OPSET)
    element = _element_type(dtype)
    num_experts = weights["w_gate_up"].shape[0]

    def graph_input(name: str, width: int):
        return _tensors.SymbolicTensor(opset, name=name, shape=ir.Shape(["T", width]), type=ir.TensorType(element))

    def initializer(name: str):
        tensor = weights.get(name)
        if tensor is None:
            return None
        value = _tensors.SymbolicTensor(opset, name=name, shape=ir.Shape(tensor.shape),
                                        type=ir.TensorType(_element_type(tensor.dtype)))
        value.const_value = TorchTensor(tensor.contiguous(), name=name)
        return value

    hidden = graph_input("hidden", hidden_shape[1])
    logits = graph_input("router_logits", num_experts)
    tensors = {name: initializer(name) for name in _WEIGHT_NAMES}
    report = LoweringReport(target, sorted_prompts=not expert_halves, expert_halves=expert_halves)
    translate = translation(target, report, [0])
    recorder = _building.OpRecorder(opset, {})
    with evaluator.default_as(recorder):
        out = translate(hidden, logits, *(tensors[name] for name in _WEIGHT_NAMES), *attribute_args(attrs))
    out.name = "out"
    graph = ir.Graph([hidden, logits], [out], nodes=recorder.nodes,
                     initializers=[value for value in tensors.values() if value is not None],
                     opset_imports={"": OPSET, "com.microsoft": 1, "moe_compile": 1})
    model = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    weight_pass(target, expert_halves)(model)
    return model


def _element_type(dtype: torch.dtype):
    import onnx_ir as ir

    return ir.DataType(element_type(torch=dtype).onnx)

