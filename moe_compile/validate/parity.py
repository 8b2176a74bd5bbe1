"""`moe-compile validate`: an ONNX model (in ONNX Runtime) or a TensorRT engine against the
PyTorch reference, end to end.

    prefill (empty past) -> decode one step -> greedy generation of N tokens
    prefill and decode compared with the dtype's tolerance; the candidate generates its N tokens
    step by step, and the reference checks them in one forward over prompt + tokens (its greedy
    choice after each prefix: validate/generation.py, greedy_choices); on an ONNX mismatch, a
    debug export with every MoE block's output exposed names the first layer that diverges.

Both files carry moe-compile's metadata (the ONNX file in metadata_props, an engine in its
name), checked against the model and the plan the same way; the comparison sees only runners.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moe_compile.compiler.fingerprint import check_same_weights
from moe_compile.compiler.layered_model import reference_lm
from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.lexi.plan import load_plan
from moe_compile.errors import InvalidInput
from moe_compile.export.decoder import decoder_inputs, empty_past, past_names
from moe_compile.export.length_dispatch import DECODE_COMPUTE_KEY
from moe_compile.export.length_dispatch import prompt_graph
from moe_compile.export.lowering import TARGETS, moe_output_name
from moe_compile.onnx_files import read_onnx_graph
from moe_compile.quantization.scheme import METADATA_KEY as QUANTIZE_KEY
from moe_compile.quantization.scheme import QuantScheme, dequantize_model

from .compare import OutputDiff, compare_outputs
from .generation import greedy_choices, greedy_generate
from .runners import OnnxRuntimeRunner, TensorRTRunner, TorchRunner
from .tolerances import INT8_ACTIVATIONS, TOLERANCES, Tolerance


@dataclass
class ParityReport:
    file: str
    runtime: str  # onnxruntime | tensorrt
    target: str
    dtype: str
    tolerance: dict
    prefill: list[OutputDiff]
    decode: list[OutputDiff]
    generated_tokens: int
    generation_identical: bool
    first_generation_difference: int | None
    first_diverging_layer: int | None = None
    # Where decode steps run another computation than the prompt (a quantized file's int8 decode
    # branch, export/length_dispatch.py): the tolerance they are compared at.
    decode_tolerance: dict | None = None
    # When every MoE layer is within tolerance but the outputs are not: the MoE layer whose
    # output differs most (relative), so a failure always points somewhere.
    largest_moe_difference_layer: int | None = None
    layer_diffs: list[OutputDiff] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(d.passed for d in self.prefill + self.decode) and self.generation_identical

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def onnx_metadata(path: Path) -> dict[str, str]:
    model = read_onnx_graph(path)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if "moe_compile.model_sha256" not in metadata:
        raise InvalidInput(f"{path} was not exported by moe-compile (no moe_compile metadata)")
    _check_metadata(metadata, path)
    return metadata


def engine_metadata(engine, path: Path) -> dict[str, str]:
    """The metadata `moe-compile build` put in the engine's name (the ONNX file's)."""
    from moe_compile.plugins.tensorrt.builder import metadata_from_engine_name

    metadata = metadata_from_engine_name(engine.name)
    if "moe_compile.model_sha256" not in metadata:
        raise InvalidInput(f"{path} was not built by moe-compile (the engine has no moe_compile metadata)")
    _check_metadata(metadata, path)
    return metadata


def _check_metadata(metadata: dict[str, str], path: Path) -> None:
    """The moe_compile.* keys the exporter writes, with values it can write."""
    def malformed(what: str) -> InvalidInput:
        return InvalidInput(f"{path} has malformed moe_compile metadata ({what})")

    for key, allowed in (("moe_compile.dtype", TOLERANCES), ("moe_compile.target", TARGETS)):
        if metadata.get(key) not in allowed:
            raise malformed(f"{key} is {metadata.get(key)!r}, not one of {', '.join(allowed)}")
    if QUANTIZE_KEY in metadata:
        try:
            QuantScheme.from_metadata(metadata[QUANTIZE_KEY])
        except ValueError:
            raise malformed(f"{QUANTIZE_KEY} is {metadata[QUANTIZE_KEY]!r}, not int4|int8/block size") from None
    try:
        top_k = json.loads(metadata.get("moe_compile.top_k", ""))
    except ValueError:
        raise malformed("moe_compile.top_k is not JSON") from None
    if not isinstance(top_k, dict) or not all(key.isdigit() and type(value) is int for key, value in top_k.items()):
        raise malformed("moe_compile.top_k is not a {layer: k} object")


def check_metadata_matches(metadata: dict, moe_model: MoEModel, plan, path: Path) -> dict[int, int]:
    if metadata["moe_compile.model_sha256"] != moe_model.structure["sha256"]:
        raise InvalidInput(f"{path} was exported from another model, not {moe_model.path}")
    check_same_weights(metadata.get("moe_compile.weights_sha256"), moe_model, str(path))
    top_k = {int(k): v for k, v in json.loads(metadata["moe_compile.top_k"]).items()}
    if plan and load_plan(plan, moe_model) != top_k:
        raise InvalidInput(f"{path} was exported with other per-layer top-k than {plan}")
    return top_k


def validate_onnx(moe_model: MoEModel, onnx_path: str | Path, plan: str | Path | None = None,
                  new_tokens: int = 32, seed: int = 0) -> ParityReport:
    path = Path(onnx_path)
    metadata = onnx_metadata(path)
    top_k = check_metadata_matches(metadata, moe_model, plan, path)
    if metadata["moe_compile.target"] == "tensorrt":
        raise InvalidInput(f"{path} is a tensorrt-target export (plugin nodes): build it and validate the engine "
                           "(--engine), or export --target onnxruntime|onnx to check it in ONNX Runtime")
    if metadata["moe_compile.dtype"] == "bf16":
        raise InvalidInput("ONNX Runtime on the CPU does not run bf16 models: validate an fp32 or fp16 export")
    model = reference_model(moe_model, metadata, top_k)
    runner = OnnxRuntimeRunner(path, prepack=False)
    report, prefill_feed = _compare_runners(model, runner, path, metadata, new_tokens, seed)
    del runner  # a per-layer look opens a session of its own: never two at once
    if not report.passed:
        tolerance = tolerance_of(metadata)
        report.layer_diffs = _layer_diffs(moe_model, model, path, prefill_feed, tolerance)
        report.first_diverging_layer = next(
            (_moe_layer(d) for d in report.layer_diffs if not d.passed), None)
        if report.first_diverging_layer is None and report.layer_diffs:
            report.largest_moe_difference_layer = _moe_layer(max(report.layer_diffs, key=lambda d: d.max_rel))
    return report


def reference_model(moe_model: MoEModel, metadata: dict, top_k: dict[int, int]) -> torch.nn.Module:
    """The PyTorch model a file is checked against, at its top-k and dtype: over 2 GiB, layer by
    layer (one decoder layer's weights resident at a time, compiler/layered_model.py); for a
    quantized export, with the weights it quantized replaced by their dequantized values (those of
    each unit as it is read, where it runs layer by layer)."""
    prepare = None
    if QUANTIZE_KEY in metadata:
        prepare = functools.partial(dequantize_model, scheme=QuantScheme.from_metadata(metadata[QUANTIZE_KEY]))
    return reference_lm(moe_model, metadata["moe_compile.dtype"], top_k, prepare=prepare)


def tolerance_of(metadata: dict, step: str = "prefill") -> Tolerance:
    """The dtype's tolerance, or int8 activations' (see tolerances.py) where the file computes this
    step ("prefill" or "decode") on them: every step of an int8 export, the decode steps of a file
    split by input length."""
    scheme = QuantScheme.from_metadata(metadata[QUANTIZE_KEY]) if QUANTIZE_KEY in metadata else None
    int8 = (scheme is not None and scheme.name == "int8") or (step == "decode" and DECODE_COMPUTE_KEY in metadata)
    return INT8_ACTIVATIONS if int8 else TOLERANCES[metadata["moe_compile.dtype"]]


def validate_engine(moe_model: MoEModel, engine_path: str | Path, plan: str | Path | None = None,
                    new_tokens: int = 32, seed: int = 0) -> ParityReport:
    """The engine against the reference at the engine's own top-k and dtype (its metadata). The
    reference runs on the CPU, as for ONNX Runtime, so both sides are the ones validate knows."""
    path = Path(engine_path)
    candidate = TensorRTRunner(path)
    metadata = engine_metadata(candidate.engine, path)
    top_k = check_metadata_matches(metadata, moe_model, plan, path)
    return _compare_runners(reference_model(moe_model, metadata, top_k), candidate, path, metadata, new_tokens,
                            seed)[0]


def _compare_runners(model: torch.nn.Module, candidate, path: Path, metadata: dict, new_tokens: int,
                     seed: int) -> tuple[ParityReport, dict]:
    """Prefill, one decode step and greedy generation through the reference and `candidate`;
    the report and the prefill feed (for a per-layer look on a mismatch)."""
    dtype = metadata["moe_compile.dtype"]
    tolerance, decode_tolerance = tolerance_of(metadata), tolerance_of(metadata, "decode")
    reference = TorchRunner(model)
    _check_interface(candidate, reference, path)

    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=generator)
    nothing = empty_past(model, 2, model.dtype)
    prefill_feed = decoder_inputs(model, prompt, nothing).as_feed(reference.num_layers)
    expected = reference.infer(prefill_feed)
    prefill = compare_outputs(expected, candidate.infer(prefill_feed), tolerance, reference.output_names)

    present = tuple(torch.from_numpy(expected[name]) for name in reference.output_names[1:])
    next_ids = torch.from_numpy(expected["logits"][:, -1].argmax(-1))[:, None]
    decode_feed = decoder_inputs(model, next_ids, present).as_feed(reference.num_layers)
    decode = compare_outputs(reference.infer(decode_feed), candidate.infer(decode_feed), decode_tolerance,
                             reference.output_names)

    empty = [t.float().numpy() for t in nothing]
    context = getattr(model.config, "max_position_embeddings", None)
    tokens_candidate = greedy_generate(candidate, prompt.numpy(), new_tokens, empty, context)
    # the reference's greedy run, checked in one forward pass (generation.py: greedy_choices)
    differs = np.flatnonzero((greedy_choices(reference, prompt.numpy(), tokens_candidate, empty)
                              != tokens_candidate).any(axis=0))
    report = ParityReport(
        file=str(path), runtime=candidate.name, target=metadata["moe_compile.target"], dtype=dtype,
        tolerance=asdict(tolerance), prefill=prefill, decode=decode, generated_tokens=new_tokens,
        generation_identical=not differs.size, first_generation_difference=int(differs[0]) if differs.size else None,
        decode_tolerance=asdict(decode_tolerance) if decode_tolerance != tolerance else None)
    return report, prefill_feed


def _check_interface(candidate, reference: TorchRunner, path: Path) -> None:
    """The file must be a decoder with the exported names (its metadata alone proves nothing)."""
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names(reference.num_layers)]
    missing = [name for name in inputs if name not in candidate.input_names]
    missing += [name for name in reference.output_names if name not in candidate.output_names]
    if missing:
        raise InvalidInput(f"{path} is not a decoder exported by moe-compile for this model "
                           f"(it lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")


def _moe_layer(diff: OutputDiff) -> int:
    """The layer index of a `moe_output.{layer}` diff."""
    return int(diff.name.split(".")[1])


def _layer_diffs(moe_model: MoEModel, model: torch.nn.Module, onnx_path: Path, feed: dict,
                 tolerance) -> list[OutputDiff]:
    """Every MoE layer's GroupedMoE output, PyTorch against the ONNX file itself: the file's
    `moe_output.{layer}` values are exposed as extra outputs of a copy of its graph, run in
    memory on the file's own external data (nothing written, the weights not copied). A file
    split by input length is run as its prompt body, the one `feed` (a prompt) runs."""
    import onnx

    names = [moe_output_name(spec.index) for spec in moe_model.layers]
    graph_model = read_onnx_graph(onnx_path)
    prompt_graph(graph_model)
    elem_type = graph_model.graph.output[0].type.tensor_type.elem_type
    graph_model.graph.output.extend(onnx.helper.make_tensor_value_info(name, elem_type, None) for name in names)
    got = OnnxRuntimeRunner(onnx_path, graph=graph_model, prepack=False).infer(feed)
    expected = {}
    handles = [model.get_submodule(spec.module_path).register_forward_hook(_record_routed(expected, name))
               for spec, name in zip(moe_model.layers, names)]
    try:
        TorchRunner(model).infer(feed)
    finally:
        for handle in handles:
            handle.remove()
    return compare_outputs(expected, got, tolerance, names)


def _record_routed(into: dict, name: str):
    def hook(module, args, output):
        hidden = args[0]
        with torch.no_grad():
            into[name] = module.routed_experts(hidden.reshape(-1, hidden.shape[-1])).float().numpy()

    return hook
