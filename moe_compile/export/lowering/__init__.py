"""How the GroupedMoE op becomes ONNX, per `--target`: one translation function each.

The exporter hands every `moe_compile::grouped_moe` call to the target's translation, with
the op's tensors (as ONNX values) and its attributes (as a GroupedMoEAttributes). Each
translation also records, per layer, how it lowered it, for the export report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from moe_compile.plugins.grouped_moe import GroupedMoEAttributes

TARGETS = ("tensorrt", "onnxruntime", "onnx")


@dataclass
class LoweringReport:
    """Per MoE layer, in graph order: what its GroupedMoE became and, for a fallback, why."""

    target: str
    layers: list[dict] = field(default_factory=list)

    def add(self, lowered_to: str, attrs: GroupedMoEAttributes, reason: str | None = None) -> None:
        entry = {"lowered_to": lowered_to, "top_k": attrs.top_k}
        if reason:
            entry["reason"] = reason
        self.layers.append(entry)


def split_op_args(args: tuple) -> tuple[tuple, GroupedMoEAttributes]:
    """The op's positional arguments -> (7 tensors, attributes), in the schema's order."""
    (top_k, scoring, normalize_topk, routed_scaling, activation, swiglu_alpha, swiglu_limit, n_group,
     topk_group, group_scoring) = args[7:]
    return args[:7], GroupedMoEAttributes(
        top_k=top_k, scoring=scoring, normalize_topk=bool(normalize_topk), routed_scaling=routed_scaling,
        activation=activation, swiglu_alpha=swiglu_alpha, swiglu_limit=swiglu_limit, n_group=n_group,
        topk_group=topk_group, group_scoring=group_scoring)


def moe_output_name(layer: int) -> str:
    """The ONNX value holding MoE layer `layer`'s GroupedMoE output (routed experts only)."""
    return f"moe_output.{layer}"


def weight_pass(target: str) -> Callable:
    """What the target does to the GroupedMoE weights once the graph is built (in place on a
    ModelProto): onnxruntime reorders and interleaves com.microsoft.MoE's experts; others nothing."""
    if target == "onnxruntime":
        from .onnxruntime import prepare_ort_moe_weights

        return prepare_ort_moe_weights
    return lambda onnx_model: None


def translation(target: str, report: LoweringReport, layers: list[int]) -> Callable:
    """The custom translation for torch.onnx.export of `moe_compile::grouped_moe` on `target`.

    `layers` are the MoE layer indices in call order, recorded in the report.
    """
    if target == "tensorrt":
        from .tensorrt import lower_to_plugin_node as lower
    elif target == "onnxruntime":
        from .onnxruntime import lower_to_ort_moe as lower
    else:
        from .standard import lower_to_standard_ops as lower

    def translate(*args):
        tensors, attrs = split_op_args(args)
        layer = layers[len(report.layers)]
        output = lower(*tensors, attrs=attrs, report=report)
        report.layers[-1]["layer"] = layer
        return output

    return translate
