"""The six TensorRT plugin stages of one GroupedMoE node, in plain Python.

TensorRT's AOT Python plugin launches one kernel per plugin and gives it no workspace, so the
node becomes six plugin nodes, one per kernel of the multi-chunk pipeline (kernels.py); the
scratch buffers of `LaunchPlan.buffers()` become the tensors between them:

    router_logits, hidden, score_bias ─► Route   ─► topk_ids, topk_weights, slot_rank, chunk_counts, nonfinite
    chunk_counts, topk_ids (its size)  ─► Scan    ─► chunk_offsets, expert_counts, expert_start, block_expert
    topk_ids, slot_rank, chunk_offsets, expert_start ─► Scatter ─► sorted_ids
    hidden, w_gate_up, b_gate_up, sorted_ids, block_expert, expert_counts, expert_start ─► GateUp ─► inter
    inter, w_down, b_down, topk_weights, sorted_ids, block_expert, expert_counts, expert_start ─► Down ─► per_slot
    per_slot, nonfinite               ─► Combine ─► output

A stage's inputs, runtime ints (`StageLayer.ints`) and outputs are listed in its kernel's parameter order, which
is the order TensorRT passes them (input pointers, the extra int32 arguments, output pointers).
Shapes, grids and ints come from `LaunchPlan` evaluated for a token count that may be symbolic
(TensorRT's shape expression at build time, `symbolic.Sym` in tests, an int when run), so one
description drives the plugin registration (plugin.py), the CPU evaluator of the tests and
benchmarks/aot_check.py. No TensorRT, torch or triton here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes
from moe_compile.plugins.grouped_moe.configs import KernelConfig, default_config
from moe_compile.plugins.grouped_moe.launch_plan import INT_OPS, LaunchPlan, SizeOps

PLUGIN_NAMESPACE = "moe_compile"
PLUGIN_VERSION = "1"
# The node inputs of GroupedMoE (export/schema.py INPUTS); an absent optional one is replaced by
# a one-element stand-in that the kernel never reads (a plugin has a fixed number of inputs).
NODE_INPUTS = ("hidden", "router_logits", "w_gate_up", "w_down", "b_gate_up", "b_down", "score_bias")
NODE_OUTPUT = "output"


@dataclass(frozen=True)
class Stage:
    plugin: str  # the plugin's name (the ONNX op_type) in PLUGIN_NAMESPACE
    launch: str  # its key in LaunchPlan.grids() and LaunchPlan.constexprs()
    kernel: str  # the Triton kernel in kernels.py
    inputs: tuple[str, ...]  # pipeline tensors, in the kernel's parameter order
    outputs: tuple[str, ...]
    # The input whose first dimension gives the plugin T (TensorRT derives output shapes from
    # input shapes alone), and whether that dimension counts slots (T * top_k) instead.
    token_input: str
    counts_slots: bool = False
    unused: tuple[str, ...] = ()  # parameters of the decode shortcut: passed None


STAGES = (
    Stage("GroupedMoERoute", "route", "_route_kernel", ("router_logits", "hidden", "score_bias"),
          ("topk_ids", "topk_weights", "slot_rank", "chunk_counts", "nonfinite"), "hidden",
          unused=("expert_counts_ptr", "expert_start_ptr", "block_expert_ptr", "sorted_ids_ptr", "max_blocks")),
    Stage("GroupedMoEScan", "scan", "_scan_kernel", ("chunk_counts", "topk_ids"),
          ("chunk_offsets", "expert_counts", "expert_start", "block_expert"), "topk_ids", counts_slots=True),
    Stage("GroupedMoEScatter", "scatter", "_scatter_kernel", ("topk_ids", "slot_rank", "chunk_offsets", "expert_start"),
          ("sorted_ids",), "topk_ids", counts_slots=True),
    Stage("GroupedMoEGateUp", "gate_up", "_gate_up_kernel",
          ("hidden", "w_gate_up", "b_gate_up", "sorted_ids", "block_expert", "expert_counts", "expert_start"),
          ("inter",), "hidden"),
    Stage("GroupedMoEDown", "down", "_down_kernel",
          ("inter", "w_down", "b_down", "topk_weights", "sorted_ids", "block_expert", "expert_counts", "expert_start"),
          ("per_slot",), "inter", counts_slots=True),
    Stage("GroupedMoECombine", "combine", "_combine_kernel", ("per_slot", "nonfinite"), (NODE_OUTPUT,),
          "nonfinite"),
)
GEMM_STAGES = ("gate_up", "down")  # their tactics are kernel configs (BLOCK_N, BLOCK_K, GROUP_M, warps, stages)


def _layer_attribute_types() -> dict[str, type]:
    """Node attribute -> plugin field type: the op's attributes (booleans as ints, as ONNX
    stores them), then the layer's shape and the expansion's choices."""
    hints = {"int": int, "bool": int, "float": float, "str": str}
    op = {f.name: hints[f.type] for f in dataclasses.fields(GroupedMoEAttributes)}
    return {**op, "num_experts": int, "hidden_size": int, "inter_size": int, "block_m": int,
            "has_score_bias": int, "has_gate_up_bias": int, "has_down_bias": int}


# Every stage node carries all of these (named apart from the stages' tensors), in this order:
# TensorRT's ONNX parser hands the plugin its fields in the order the plugin registered them,
# and the AOT implementation receives them positionally in that order.
ATTRIBUTE_TYPES = _layer_attribute_types()


@dataclass(frozen=True)
class StageLayer:
    """What the six nodes of one layer know: the op's attributes, the layer's shape, the
    optional inputs present, and block_m, the rows each expert's group is padded to (fixed at
    expansion: it sizes the scratch tensors). The GEMM stages' tactics may use any BLOCK_M that
    divides it, so TensorRT can pick a small one for a decode profile and block_m for prefill."""

    attrs: GroupedMoEAttributes
    experts: int
    hidden: int
    inter: int
    block_m: int
    has_score_bias: bool = False
    has_gate_up_bias: bool = False
    has_down_bias: bool = False

    def node_attributes(self) -> dict[str, int | float | str]:
        values = {**self.attrs.as_dict(), "num_experts": self.experts, "hidden_size": self.hidden,
                  "inter_size": self.inter,
                  "block_m": self.block_m, "has_score_bias": self.has_score_bias,
                  "has_gate_up_bias": self.has_gate_up_bias, "has_down_bias": self.has_down_bias}
        return {name: kind(values[name]) for name, kind in ATTRIBUTE_TYPES.items()}

    @classmethod
    def from_node_attributes(cls, values: dict) -> StageLayer:
        missing = set(ATTRIBUTE_TYPES) - set(values)
        if missing:
            raise InvalidInput(f"stage attributes missing: {', '.join(sorted(missing))}")
        kinds = {f.name: f.type for f in dataclasses.fields(GroupedMoEAttributes)}

        def op_value(name):  # a string field may arrive NUL-terminated (a C plugin field)
            value = values[name]
            return bool(value) if kinds[name] == "bool" else value.rstrip("\0") if kinds[name] == "str" else value

        attrs = GroupedMoEAttributes(**{name: op_value(name) for name in kinds})
        return cls(attrs, int(values["num_experts"]), int(values["hidden_size"]), int(values["inter_size"]),
                   int(values["block_m"]),
                   bool(values["has_score_bias"]), bool(values["has_gate_up_bias"]), bool(values["has_down_bias"]))

    def config(self, gemm: KernelConfig | None = None) -> KernelConfig:
        """The GEMM config of a tactic, or (stages without a GEMM) the first tactic's."""
        config = gemm or self.gemm_configs()[0]
        if self.block_m % config.BLOCK_M:
            raise InvalidInput(f"config BLOCK_M={config.BLOCK_M} does not divide the layer's block_m={self.block_m}")
        return config

    def gemm_configs(self, tuned: dict[int, KernelConfig] | None = None) -> list[KernelConfig]:
        """The GEMM configs offered as tactics (tactic i + 1 is entry i): the tuned table's
        entries whose BLOCK_M divides block_m, then the untuned defaults (decode to prefill), a
        BLOCK_M that does not divide block_m made block_m."""
        defaults = [default_config(tokens, self.experts, self.attrs.top_k) for tokens in (1, 1024, 16384)]
        candidates = [c for c in (tuned or {}).values() if self.block_m % c.BLOCK_M == 0]
        candidates += [c if self.block_m % c.BLOCK_M == 0 else dataclasses.replace(c, BLOCK_M=self.block_m)
                       for c in defaults]
        return list(dict.fromkeys(candidates))

    def tokens(self, stage: Stage, first_dim):
        """T, from the first dimension of the stage's token_input (symbolic in TensorRT)."""
        return first_dim // self.attrs.top_k if stage.counts_slots else first_dim

    def plan(self, tokens, config: KernelConfig | None = None, ops: SizeOps = INT_OPS) -> LaunchPlan:
        """The multi-chunk plan (the engine's token count is only known at run time)."""
        return LaunchPlan(tokens=tokens, experts=self.experts, hidden=self.hidden, inter=self.inter,
                          top_k=self.attrs.top_k, n_group=self.attrs.n_group if self.attrs.group_limited else 1,
                          config=self.config(config), decode_shortcut=False, align_m=self.block_m, ops=ops)

    def tensors(self, plan: LaunchPlan) -> dict[str, tuple[tuple, str]]:
        """Every tensor of the pipeline: name -> (shape, dtype), dtype "act" being the activations'."""
        e, h, i = self.experts, self.hidden, self.inter
        # Route reads fp32 logits whatever the activations (expand.py casts them; exact, and the
        # kernel routes in fp32 anyway), so a model whose router runs in fp32 needs no second type.
        node = {"hidden": ((plan.tokens, h), "act"), "router_logits": ((plan.tokens, e), "float32"),
                "w_gate_up": ((e, 2 * i, h), "act"), "w_down": ((e, h, i), "act"),
                "b_gate_up": ((e, 2 * i) if self.has_gate_up_bias else (1,), "act"),
                "b_down": ((e, h) if self.has_down_bias else (1,), "act"),
                "score_bias": ((e,) if self.has_score_bias else (1,), "act"),
                NODE_OUTPUT: ((plan.tokens, h), "act")}
        return {**node, **plan.buffers()}

    def ints(self, plan: LaunchPlan) -> dict[str, dict[str, object]]:
        """Each launch's runtime ints, by parameter name; every tensor is contiguous in the engine."""
        e, h, i = self.experts, self.hidden, self.inter
        return {
            "route": {"num_tokens": plan.tokens, "num_experts": e, "stride_logits": e, "stride_hidden": h},
            "scan": {"num_chunks": plan.chunks, "num_experts": e, "max_blocks": plan.max_blocks},
            "scatter": {"num_slots": plan.slots, "num_experts": e},
            "gate_up": {"top_k": self.attrs.top_k, "num_experts": e, "max_blocks": plan.gemm_blocks,
                        "stride_we": 2 * i * h, "stride_wn": h, "stride_wk": 1,
                        "stride_be": 2 * i if self.has_gate_up_bias else 0},
            "down": {"num_experts": e, "max_blocks": plan.gemm_blocks, "stride_we": h * i, "stride_wn": i,
                     "stride_wk": 1, "stride_be": h if self.has_down_bias else 0},
            "combine": {"hidden_size": h},
        }

    def launch(self, stage: Stage, tokens, fp32: bool, config: KernelConfig | None = None,
               ops: SizeOps = INT_OPS) -> StageLaunch:
        plan = self.plan(tokens, config, ops)
        tensors = self.tensors(plan)
        constexprs = plan.constexprs(self.attrs, score_bias=self.has_score_bias, gate_up_bias=self.has_gate_up_bias,
                                     down_bias=self.has_down_bias, fp32=fp32)
        return StageLaunch(stage=stage, grid=plan.grids()[stage.launch],
                           inputs={name: tensors[name] for name in stage.inputs},
                           ints=self.ints(plan)[stage.launch], outputs={name: tensors[name] for name in stage.outputs},
                           constexprs=constexprs[stage.launch],
                           options=plan.options() if stage.launch in GEMM_STAGES else {})


@dataclass(frozen=True)
class StageLaunch:
    """One stage's launch for a token count (sizes symbolic or ints, as the count)."""

    stage: Stage
    grid: tuple
    inputs: dict[str, tuple[tuple, str]]  # name -> (shape, dtype), in parameter order
    ints: dict[str, object]  # the kernel's runtime int parameters, in its order
    outputs: dict[str, tuple[tuple, str]]
    constexprs: dict[str, object]
    options: dict[str, int]


def engine_block_m(experts: int, top_k: int, max_tokens: int) -> int:
    """A layer's block_m in an engine serving up to `max_tokens` tokens a call: the BLOCK_M of the
    default config at that count, the largest any token bucket's config takes (smaller ones divide it)."""
    return default_config(max_tokens, experts, top_k).BLOCK_M


def stage_named(plugin: str) -> Stage:
    return next(stage for stage in STAGES if stage.plugin == plugin)
