"""MODEL (+ plan) -> model.onnx, as a chain of small steps:

    check --out -> load the model -> apply the plan (rewrite) -> wrap with its KV cache
    -> torch.onnx (dynamo), translating each GroupedMoE call for the target
    -> onnxruntime target, fp32: tables only Gather reads (the embedding) kept at the checkpoint's bf16/fp16
    -> onnxruntime target: RoPE as RotaryEmbedding while tracing; RMS norms fused (fp32), or with
       --ort-fusions (fp32) attention and norms as ONNX Runtime's fused ops
    -> the target's weight pass (onnxruntime: reorder experts, interleave fc1)
    -> with --quantize (onnxruntime target): experts to QMoE, dense projections to MatMulNBits
       (their values computed as they are written) -> name each layer's MoE output
    -> onnxruntime, fp32 experts: com.microsoft.MoE for a few tokens, sorted experts for more
    -> onnxruntime, with those switches or the attentions' or --quantize: split by input length (no
       switch in a decode step; with --quantize decode steps compute in int8); attention switches hoisted
    -> strip trace metadata
    -> add moe_compile metadata -> check -> staged save and rename
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir
import torch

from moe_compile import interrupts
from moe_compile.atomic import check_writable
from moe_compile.compiler.compiled import compiled_model, skeleton_model
from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.lexi.plan import load_plan
from moe_compile.dtypes import PRECISIONS, torch_dtype
from moe_compile.errors import InvalidInput, MoeCompileError, one_line
from moe_compile.quantization.scheme import METADATA_KEY as QUANTIZE_METADATA_KEY
from moe_compile.quantization.scheme import QuantScheme

from .complex_views import make_complex_views_exportable
from .decoder import CausalLMWithCache, dynamic_shapes, example_inputs, past_names, present_names
from .early_experts import EarlyMoEWrites
from . import grouped_attention as attention
from .fused_rotary import fused_rotary
from .grouped_attention import grouped_attention
from .hoisted_attention import hoist_grouped_attention
from .length_dispatch import DECODE_COMPUTE_KEY, long_body, split_by_length
from .length_dispatch import METADATA_KEY as SPLIT_KEY
from .narrow_tables import checkpoint_dtypes, narrow_lookup_tables
from .subgraphs import all_nodes, drop_unread_initializers, subgraphs
from .lowering import TARGETS, LoweringReport, expert_layouts, moe_output_name, translation, weight_pass
from .lowering.prompt_attention import METADATA_KEY as PROMPT_ATTENTION_KEY
from .lowering.prompt_attention import count_prompt_kernels, drop_score_outputs, lower_to_group_query_attention
from .lowering.rotary_embedding import lower_to_rotary_embedding
from .lowering.sorted_experts import METADATA_KEY as MOE_PROMPTS_KEY
from .lowering.sorted_experts import MOE_PROMPTS, NODE, SORTED, sort_multi_token_experts
from .ort_fusions import METADATA_KEY as ORT_FUSIONS_KEY
from .ort_fusions import NORM_FUSIONS_KEY, fuse_for_onnxruntime, fuse_norms
from .quantize_pass import quantize_graph
from .repeated_layers import LayerCopyError, plan_repeats, repeat_layers, traced_prefix
from .rewrite_speed import linear_default_rewrites
from .streamed_weights import bind_weights, fold_weight_transposes, set_expert_layouts, write_external_data

DTYPES = {name: torch_dtype(name) for name in PRECISIONS}  # from the one table (moe_compile/dtypes.py)
OPSET = 18
EXTERNAL_DATA_THRESHOLD = 2 << 30  # protobuf's limit: beyond it, weights go to model.onnx.data


@dataclass
class ExportResult:
    path: Path
    report: LoweringReport
    top_k: dict[int, int]
    dtype: str
    quantized: dict | None = None  # what --quantize turned into QMoE / MatMulNBits

    def to_json(self) -> dict:
        return {"onnx": str(self.path), "target": self.report.target, "dtype": self.dtype,
                "top_k": {str(k): v for k, v in self.top_k.items()}, "moe_layers": self.report.layers,
                **({"quantized": self.quantized} if self.quantized else {}),
                **({"ort_fusions": self.report.ort_fusions} if self.report.ort_fusions else {}),
                **({"norm_fusions": self.report.norm_fusions} if self.report.norm_fusions else {}),
                **({"prompt_attention": self.report.prompt_attention} if self.report.prompt_attention else {}),
                **({"split_by_length": self.report.split_by_length} if self.report.split_by_length else {})}


def _name_moe_outputs(onnx_model, layers: list[int]) -> None:
    """Rename each MoE layer's GroupedMoE output value to `moe_output.{layer}`.

    The nodes a translation emitted carry the FX node they came from (`%grouped_moe`,
    `%grouped_moe_1`, ... in call order, which is layer order), and torch.onnx names the
    translation's output value after that FX node. (Not "the value used outside the group":
    nodes the optimizer adds to a translation, casts, carry no FX node.)
    """
    groups: dict[str, list] = {}
    for node in onnx_model.graph.node:
        fx_node = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        if "torch.ops.moe_compile.grouped_moe" in fx_node:
            groups.setdefault(fx_node.split(" ", 1)[0], []).append(node)
    if len(groups) != len(layers):
        raise RuntimeError(f"found {len(groups)} GroupedMoE translations for {len(layers)} MoE layers")
    renames = {}
    for layer, (fx_name, nodes) in zip(layers, groups.items()):
        output = fx_name.removeprefix("%")
        if output not in {out for node in nodes for out in node.output}:
            raise RuntimeError(f"the translation of {fx_name} does not produce a value named {output}")
        renames[output] = moe_output_name(layer)
    for node in onnx_model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for info in onnx_model.graph.value_info:
        info.name = renames.get(info.name, info.name)


def _strip_trace_metadata(onnx_model) -> None:
    """Drop the exporter's per-node stack traces and class paths: they hold local paths and
    would make the file depend on where it was built; and what it notes of the graph's inputs
    and outputs (torch.export's placeholder names), which depends on how the graph was traced;
    in If branches too (the attentions' prompt switch)."""
    for node in all_nodes(onnx_model.graph.node):
        del node.metadata_props[:]
        for value in (output for graph in subgraphs(node) for output in graph.output):
            del value.metadata_props[:]
    for value in (*onnx_model.graph.input, *onnx_model.graph.output):
        del value.metadata_props[:]


def export_onnx(moe_model: MoEModel, out: str | Path, target: str = "onnx", plan: str | Path | None = None,
                dtype: str = "fp32", top_k: dict[int, int] | None = None,
                quantize: QuantScheme | None = None, streamed: bool = True, moe_prompts: str = SORTED,
                ort_fusions: bool = False) -> ExportResult:
    """Export MODEL, rewritten to `plan` (or to `top_k`, or at its base top-k), to `out`;
    weight-only quantized with `quantize` (onnxruntime target, fp32). `moe_prompts` (onnxruntime
    target, fp32 experts): "sorted" runs inputs of a few tokens or more as sorted experts, "node"
    keeps com.microsoft.MoE for every token count (export/lowering/sorted_experts.py).
    `ort_fusions` (onnxruntime target, fp32): attention and norms as ONNX Runtime's fused ops
    (export/ort_fusions.py; measured slower than the default, so not it); without it, an
    onnxruntime fp32 export has its RMS norms fused alone (`fuse_norms`). The report lists what was
    fused.

    Streamed (the default): trace a skeleton that holds no weights, one decoder layer of each kind
    (export/repeated_layers.py: the others are copies of those), then write every weight to
    `out`.data tensor by tensor from the checkpoint (export/streamed_weights.py). Not streamed:
    load the whole model, trace it and save the whole proto, external data only past 2 GB: the
    reference that the streamed export is tested against. A quantized export's weights are
    quantized as they are written, either way (export/quantize_pass.py).
    """
    if target not in TARGETS:
        raise InvalidInput(f"target '{target}' is not one of {', '.join(TARGETS)}")
    if dtype not in DTYPES:
        raise InvalidInput(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    if moe_prompts not in MOE_PROMPTS:
        raise InvalidInput(f"--moe-prompts '{moe_prompts}' is not one of {', '.join(MOE_PROMPTS)}")
    if quantize and (target != "onnxruntime" or dtype != "fp32"):
        raise InvalidInput(f"--quantize {quantize.name}: only for --target onnxruntime at --dtype fp32 "
                           "(com.microsoft.QMoE and MatMulNBits run in ONNX Runtime)")
    if ort_fusions and (target != "onnxruntime" or dtype != "fp32"):
        raise InvalidInput("--ort-fusions: only for --target onnxruntime at --dtype fp32 (ONNX Runtime's fused ops, "
                           "measured on its CPU provider at fp32)")
    out = check_writable(out)
    if top_k is None and plan:
        top_k = load_plan(plan, moe_model)
    report = LoweringReport(target, quantized=quantize is not None, sorted_prompts=moe_prompts == SORTED and dtype == "fp32",
                            expert_halves=moe_prompts == NODE and dtype == "fp32" and quantize is None)
    layers = [spec.index for spec in moe_model.layers]
    quantized = None
    if streamed:
        model, top_k = skeleton_model(moe_model, dtype, top_k)
        with _staging(out) as staging:
            early = EarlyMoEWrites(model, moe_model, target, staging / f"{out.name}.data", quantize, report.expert_halves)
            try:
                program = _trace_streamed(model, DTYPES[dtype], report, layers, top_k, quantize is not None,
                                          sdpa_form=ort_fusions)
                bind_weights(program.model.graph, model, moe_model, prefix="model.")
                fold_weight_transposes(program.model.graph)
                _optimize(program)  # what torch.onnx.export(optimize=True) runs, on the bound weights
                if target == "onnxruntime" and dtype == "fp32":
                    narrow_lookup_tables(program.model.graph, checkpoint_dtypes(model, moe_model, "model."))
                nodes = [(node.domain, node.op_type, [value.name if value is not None else "" for value in node.inputs])
                         for node in program.model.graph]
                shapes = {name: tuple(value.shape) for name, value in program.model.graph.initializers.items()}
                set_expert_layouts(program.model.graph, expert_layouts(target, nodes, shapes, report.expert_halves))
                _fuse_for_onnxruntime(program.model, report, dtype, ort_fusions)
                if quantize:
                    quantized = quantize_graph(program.model.graph, quantize)  # computed as it is written
                del model
                _save_streamed(program.model, out, staging, early,
                               lambda onnx_model: _finish(onnx_model, moe_model, report, dtype, top_k, layers, quantized))
            finally:
                early.cancel()
    else:
        model, top_k = compiled_model(moe_model, dtype, top_k)
        program = _trace(model, DTYPES[dtype], report, layers, sdpa_form=ort_fusions)
        if target == "onnxruntime" and dtype == "fp32":
            narrow_lookup_tables(program.model.graph, checkpoint_dtypes(model, moe_model, "model."))
        _fuse_for_onnxruntime(program.model, report, dtype, ort_fusions)
        onnx_model = program.model_proto
        weight_pass(target, report.expert_halves)(onnx_model)
        if quantize:
            onnx_ir_model = ir.serde.deserialize_model(onnx_model)
            quantized = quantize_graph(onnx_ir_model.graph, quantize)
            onnx_model = ir.serde.serialize_model(onnx_ir_model)
        _finish(onnx_model, moe_model, report, dtype, top_k, layers, quantized)
        _save(onnx_model, out)
    return ExportResult(out, report, top_k, dtype, quantized)


def _optimize(program: torch.onnx.ONNXProgram) -> None:
    """The optimizer folds small weights, so it reads them from the checkpoint: a read that fails
    there (a moe-compile error) comes out as itself, not wrapped in the optimizer's PassError."""
    try:
        with linear_default_rewrites():
            program.optimize()
    except Exception as exc:
        cause = exc
        while cause is not None and not isinstance(cause, MoeCompileError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def _fuse_for_onnxruntime(model: ir.Model, report: LoweringReport, dtype: str, ort_fusions: bool) -> None:
    """ONNX Runtime's fused ops in the traced graph, counted in `report`: all of onnxscript's fusions
    with `ort_fusions`, else, for an fp32 export to ONNX Runtime, its RMS norms alone."""
    if ort_fusions:
        report.ort_fusions = fuse_for_onnxruntime(model)
    elif report.target == "onnxruntime" and dtype == "fp32":
        report.norm_fusions = fuse_norms(model)


def _finish(onnx_model, moe_model: MoEModel, report: LoweringReport, dtype: str, top_k: dict[int, int],
            layers: list[int], quantized: dict | None = None) -> None:
    """The graph-level steps both paths share, on the ModelProto: MoE output names, fp32
    com.microsoft.MoE nodes switched by token count (lowering/sorted_experts.py; the report says so
    per layer), the attentions that run long prompts as GroupQueryAttention counted (their unread
    scores output dropped), the graph split by input length where it has switches or is quantized
    (`quantized`: the quantize pass's summary; export/length_dispatch.py) and the attention switches
    hoisted, no trace metadata, moe_compile metadata."""
    target = report.target
    _name_moe_outputs(onnx_model, layers)
    sorted_experts = report.sorted_layers > 0
    if sorted_experts and sort_multi_token_experts(onnx_model) != report.sorted_layers:
        raise RuntimeError(f"expected {report.sorted_layers} fp32 com.microsoft.MoE nodes to sort by expert")
    kernels = count_prompt_kernels(onnx_model.graph.node)
    if drop_score_outputs(onnx_model.graph) != kernels:
        raise RuntimeError("expected each GroupQueryAttention to lose its unread scores output")
    split = split_by_length(onnx_model, int8_steps=quantized is not None)
    if split:
        report.split_by_length = split.condition
    outer = frozenset(init.name for init in onnx_model.graph.initializer)
    if hoist_grouped_attention(long_body(onnx_model) if split else onnx_model.graph, outer) != kernels:
        raise RuntimeError(f"expected {kernels} attention switches to take the grouped form out of")
    if kernels:
        report.prompt_attention = {"op": "com.microsoft.GroupQueryAttention", "from_tokens": attention.MIN_PROMPT_KERNEL_TOKENS,
                                   "attention_layers": kernels}
    _strip_trace_metadata(onnx_model)
    drop_unread_initializers(onnx_model.graph)  # the RMS norms' exponent and epsilon, once fused
    int8_steps = split is not None and split.int8
    if int8_steps:
        quantized["decode_compute"] = "int8"
    metadata = {"moe_compile.target": target, "moe_compile.dtype": dtype,
                "moe_compile.model_sha256": moe_model.fingerprint["sha256"],
                "moe_compile.weights_sha256": moe_model.fingerprint["weights_sha256"],
                "moe_compile.top_k": json.dumps({str(k): v for k, v in sorted(top_k.items())}),
                "moe_compile.max_positions": str(moe_model.config.max_position_embeddings),  # the served context
                **({QUANTIZE_METADATA_KEY: quantized["scheme"]} if quantized else {}),
                **({SPLIT_KEY: split.condition} if split else {}),
                **({DECODE_COMPUTE_KEY: "int8"} if int8_steps else {}),
                **({MOE_PROMPTS_KEY: SORTED} if sorted_experts else {}),
                **({ORT_FUSIONS_KEY: json.dumps(report.ort_fusions)} if report.ort_fusions else {}),
                **({NORM_FUSIONS_KEY: json.dumps(report.norm_fusions)} if report.norm_fusions else {}),
                **({PROMPT_ATTENTION_KEY: f"GroupQueryAttention from {attention.MIN_PROMPT_KERNEL_TOKENS} tokens"}
                   if kernels else {})}
    for key, value in metadata.items():
        onnx_model.metadata_props.add(key=key, value=value)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx warns about things that do not concern our graphs (torchvision ops, axis
    renames, deprecated pytree specs), and torch logs its own tracebacks when tracing fails (an
    interrupt inside fake-tensor dispatch, for one): keep them all off the user's terminal, where
    a failed export is our one line."""
    names = ("torch", "torch.onnx", "torch.export", "torch._export", "torch._subclasses", "onnxscript")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _export_failure(exc: Exception, model: torch.nn.Module) -> InvalidInput:
    """torch.onnx's multi-page error -> one line that says what cannot be exported."""
    text = str(exc)
    summary = text.split("## Exception summary", 1)[-1].strip().splitlines()
    return InvalidInput(f"torch.onnx could not export this {model.config.model_type} model ({one_line(Exception(summary[0] if summary else text))})")


def _trace(model: torch.nn.Module, dtype: torch.dtype, report: LoweringReport, layers: list[int],
           optimize: bool = True, sdpa_form: bool = False) -> torch.onnx.ONNXProgram:
    """The model as an ONNX program; its attention grouped by key/value head (export/grouped_attention.py)
    unless `sdpa_form` (what ONNX Runtime's fusions look for)."""
    num_layers = model.config.num_hidden_layers
    wrapper = CausalLMWithCache(model).eval()
    inputs = example_inputs(model, dtype)
    prompt_kernel = report.target == "onnxruntime" and dtype in (torch.float32, torch.float16)
    with torch.no_grad(), _quiet_exporter(), grouped_attention(model, enabled=not sdpa_form, prompt_kernel=prompt_kernel), \
            fused_rotary(model, enabled=prompt_kernel and not sdpa_form):
        try:
            program = _torch_onnx_export(wrapper, inputs, num_layers, report, layers, optimize)
        except MoeCompileError:
            raise
        except Exception as exc:  # torch.export / torch.onnx raise many kinds
            raise _export_failure(exc, model) from None
    return program


def _trace_streamed(model: torch.nn.Module, dtype: torch.dtype, report: LoweringReport, layers: list[int],
                    top_k: dict[int, int], quantized: bool, sdpa_form: bool) -> torch.onnx.ONNXProgram:
    """The skeleton's program, unoptimized: one decoder layer of each kind traced and copied for the
    layers like it (export/repeated_layers.py); every layer traced, with a warning, where the
    traced graph is not laid out as the copying expects."""
    repeats = plan_repeats(model, report.target, quantized)
    if repeats is not None:
        with traced_prefix(model, repeats):
            program = _trace(model, dtype, report, [index for index in layers if index < repeats.traced],
                             optimize=False, sdpa_form=sdpa_form)
        try:
            repeat_layers(program.model.graph, model, repeats, top_k, report)
            return program
        except LayerCopyError as exc:
            warnings.warn(f"tracing every decoder layer: the traced layers could not be copied ({exc})", stacklevel=2)
            report.layers.clear()
    return _trace(model, dtype, report, layers, optimize=False, sdpa_form=sdpa_form)


def _capture(wrapper, inputs, num_layers: int) -> torch.export.ExportedProgram:
    """torch.export as torch.onnx runs it, so that the program can be mended before translation:
    `torch.onnx.is_in_onnx_export()` is true while tracing (transformers' masks take their export
    path then), 0/1 axes are size-oblivious (batch and past may be 1 or 0 at run time), and shape
    conditions a model checks (gpt-oss' sliding window) become run-time asserts, not guards."""
    from torch.onnx._internal.exporter._flags import set_onnx_exporting_flag

    @set_onnx_exporting_flag
    def export() -> torch.export.ExportedProgram:
        with torch.fx.experimental._config.patch(backed_size_oblivious=True):
            return torch.export.export(wrapper, inputs.as_args(), dynamic_shapes=dynamic_shapes(num_layers),
                                       strict=False, prefer_deferred_runtime_asserts_over_guards=True)

    program = export()
    make_complex_views_exportable(program)
    return program


def _torch_onnx_export(wrapper, inputs, num_layers: int, report: LoweringReport, layers: list[int], optimize: bool):
    with linear_default_rewrites():
        return torch.onnx.export(
            _capture(wrapper, inputs, num_layers), dynamo=True, opset_version=OPSET,
            input_names=["input_ids", "attention_mask", "position_ids", *past_names(num_layers)],
            output_names=["logits", *present_names(num_layers)],
            custom_translation_table={
                torch.ops.moe_compile.grouped_moe.default: translation(report.target, report, layers),
                torch.ops.moe_compile.causal_prompt_attention.default: lower_to_group_query_attention,
                torch.ops.moe_compile.rotary.default: lower_to_rotary_embedding},
            optimize=optimize, verbose=False)


def _save(onnx_model, out: Path) -> None:
    """Check, then write beside `out` and rename: no half-written model.onnx on failure."""
    import onnx

    external = _needs_external_data(onnx_model)
    if not external:
        onnx.checker.check_model(onnx_model, full_check=True)
    with _staging(out) as staging:
        staged = staging / out.name
        onnx.save_model(onnx_model, staged, save_as_external_data=external, all_tensors_to_one_file=True,
                        location=f"{out.name}.data", size_threshold=1024)
        if external:
            onnx.checker.check_model(str(staged), full_check=True)
        interrupts.raise_if_received()
        if external:
            (staging / f"{out.name}.data").replace(out.parent / f"{out.name}.data")
        staged.replace(out)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A folder beside `out` for what is being written; removed (with whatever is left in it) on the way out."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _save_streamed(ir_model, out: Path, staging: Path, early: EarlyMoEWrites, finish) -> None:
    """Weights to `out`.data tensor by tensor (after those `early` wrote), then the graph (no
    weights inside) to `out`, `finish`ed and checked; both in `staging` and renamed into place:
    nothing half-written is left."""
    import onnx
    import onnx_ir as ir

    data_name = f"{out.name}.data"
    written = write_external_data(ir_model.graph, staging / data_name, early)
    onnx_model = ir.serde.serialize_model(ir_model)
    finish(onnx_model)
    staged = staging / out.name
    onnx.save_model(onnx_model, staged)
    onnx.checker.check_model(str(staged), full_check=True)
    interrupts.raise_if_received()
    if written:
        (staging / data_name).replace(out.parent / data_name)
    staged.replace(out)


def _needs_external_data(onnx_model) -> bool:
    try:
        return onnx_model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    except ValueError:  # protobuf cannot even size a message past 2 GB
        return True
