"""How the GroupedMoE op becomes ONNX, per `--target`: one translation function each.

The exporter hands every `moe_compile::grouped_moe` call to the target's translation, with
the op's tensors (as ONNX values) and its attributes (as a GroupedMoEAttributes).
`choose_lowering` decides, per layer, what the call becomes; the same decision is recorded
in the export report and shown by `inspect`, so no layer changes lowering unannounced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from moe_compile.grouped_moe_op import GroupedMoEAttributes

from .ort_support import EXPERT_HALVES, FEW_TOKEN_HALVES

if TYPE_CHECKING:
    from moe_compile.compiler.weight_sources import ExpertLayout

TARGETS = ("tensorrt", "onnxruntime", "onnx")


@dataclass(frozen=True)
class Lowering:
    """What one layer's GroupedMoE becomes on a target, decided from its attributes alone, so
    that `inspect` can tell before an export what `export` then does (and reports)."""

    lowered_to: str  # "plugin", "com.microsoft.MoE" or "standard"
    routing: str  # "in the op" (the node routes) or "standard ops" (TopK & co. beside the node)
    reason: str | None = None  # why not the target's first choice
    prompts_lowered_to: str | None = None  # what inputs of several tokens run instead (sorted_experts.py)
    expert_halves: bool = False  # com.microsoft.MoE handed each expert as ort_support.EXPERT_SLICES slices
    few_token_halves: bool = False  # only below the sorted experts' token count, gathered when the session starts

    def as_dict(self) -> dict:
        halves = ({"experts": EXPERT_HALVES} if self.expert_halves else
                  {"experts": FEW_TOKEN_HALVES} if self.few_token_halves else {})
        return {"lowered_to": self.lowered_to, "routing": self.routing, **({"reason": self.reason} if self.reason else {}),
                **({"prompts_lowered_to": self.prompts_lowered_to} if self.prompts_lowered_to else {}), **halves}


def choose_lowering(target: str, attrs: GroupedMoEAttributes, has_score_bias: bool, quantized: bool = False,
                    sorted_prompts: bool = True, expert_halves: bool = False, intermediate: int | None = None) -> Lowering:
    """`sorted_prompts`: an fp32 export that did not ask `--moe-prompts node` (the default; inspect's).
    `expert_halves`: an fp32 export that did (`LoweringReport.expert_halves`); the layer's experts,
    of `intermediate` channels, are then halved where that size allows (`expert_slices`), as they
    are for the few tokens that still run the node in a sorted export (sorted_experts.py)."""
    if target == "tensorrt":
        return Lowering("plugin", "in the op")
    if target == "onnx":
        return Lowering("standard", "standard ops")
    from .ort_support import SORTED_PROMPTS, expert_slices, ort_routing_reason, ort_unsupported_reason

    unsupported = ort_unsupported_reason(attrs)
    if unsupported:
        return Lowering("standard", "standard ops", unsupported)
    routing = ort_routing_reason(attrs, has_score_bias, quantized)
    halves = not quantized and intermediate is not None and expert_slices(expert_halves, intermediate) > 1
    if halves and not routing:
        routing = "experts in halves (the node's own choice would split tied experts)"
    sorted_experts = sorted_prompts and not quantized
    return Lowering("com.microsoft.QMoE" if quantized else "com.microsoft.MoE",
                    "standard ops" if routing else "in the op", routing,
                    SORTED_PROMPTS if sorted_experts else None, expert_halves=halves,
                    few_token_halves=sorted_experts and intermediate is not None and expert_slices(True, intermediate) > 1)


@dataclass
class LoweringReport:
    """Per MoE layer, in graph order: what its GroupedMoE became and, where it is not the
    target's first choice, why."""

    target: str
    layers: list[dict] = field(default_factory=list)
    quantized: bool = False  # export --quantize: the experts become com.microsoft.QMoE
    sorted_prompts: bool = True  # fp32 com.microsoft.MoE layers run prompts as sorted experts
    expert_halves: bool = False  # fp32 com.microsoft.MoE layers run every token count, experts in halves
    ort_fusions: dict[str, int] = field(default_factory=dict)  # contrib op -> how many (export/ort_fusions.py)
    norm_fusions: dict[str, int] = field(default_factory=dict)  # the default fp32 fusions (ort_fusions.fuse_norms)
    prompt_attention: dict = field(default_factory=dict)  # the attentions long prompts run as a kernel (prompt_attention.py)
    split_by_length: str | None = None  # the short body's condition (export/length_dispatch.py)

    def add(self, lowering: Lowering, attrs: GroupedMoEAttributes) -> None:
        self.layers.append({**lowering.as_dict(), "top_k": attrs.top_k})

    @property
    def sorted_layers(self) -> int:
        return sum(1 for layer in self.layers if "prompts_lowered_to" in layer)


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


def weight_pass(target: str, expert_halves: bool = False) -> Callable:
    """What the target does to the GroupedMoE weights once the graph is built (in place on a
    ModelProto): onnxruntime reorders and interleaves com.microsoft.MoE's experts (and cuts them
    in halves for an export that asked, `LoweringReport.expert_halves`); others nothing."""
    if target == "onnxruntime":
        from .onnxruntime import prepare_ort_moe_weights

        return functools.partial(prepare_ort_moe_weights, halves=expert_halves)
    return lambda onnx_model: None


def expert_layouts(target: str, nodes, shapes: dict[str, tuple[int, ...]], expert_halves: bool = False) -> dict[str, ExpertLayout]:
    """What `weight_pass` does, one tensor at a time, for a streamed export: {expert initializer
    name: its layout (torch [E, ...] -> the experts in the file's order)} among `nodes`
    ((domain, op_type, input names) each), whose initializers have `shapes`."""
    if target != "onnxruntime":
        return {}
    from .onnxruntime import ort_expert_layouts

    return ort_expert_layouts(nodes, shapes, expert_halves)


def expert_field_layouts(target: str, lowering: Lowering) -> dict[str, ExpertLayout]:
    """The layouts `expert_layouts` will find for a layer lowered as `lowering`, by ExpertWeights
    field, known before the graph is traced: what a streamed export writes early. (A QMoE layer
    is traced as com.microsoft.MoE and quantized after: the same layout.)"""
    if target != "onnxruntime" or lowering.lowered_to not in ("com.microsoft.MoE", "com.microsoft.QMoE"):
        return {}
    from .onnxruntime import ORT_EXPERT_FIELDS, OrtExpertLayout
    from .ort_support import EXPERT_SLICES

    slices = EXPERT_SLICES if lowering.expert_halves else 1
    return {field: OrtExpertLayout(fc1, slices) for field, fc1 in ORT_EXPERT_FIELDS.items()}


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
        lowering = choose_lowering(report.target, attrs, has_score_bias=tensors[6] is not None,
                                   quantized=report.quantized, sorted_prompts=report.sorted_prompts,
                                   expert_halves=report.expert_halves, intermediate=tensors[3].shape[-1])
        report.add(lowering, attrs)
        output = lower(*tensors, attrs=attrs, lowering=lowering)
        report.layers[-1]["layer"] = layer
        return output

    return translate
