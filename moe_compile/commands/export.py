"""`moe-compile export`, `moe-compile validate` and the whole pipeline (`moe-compile MODEL --out`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_compile.atomic import writing_into
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.jsonio import print_report

from .exporting import export_with_progress
from .lexi import pipeline_outputs, write_plan
from .parity_table import print_parity


def run_export(args: argparse.Namespace) -> int:
    from moe_compile.quantization.scheme import quant_scheme

    out = Path(args.out)
    moe_model = load_moe_model(args.model)
    scheme = quant_scheme(args.quantize, args.block_size, int(moe_model.config.hidden_size),
                          [spec.intermediate for spec in moe_model.layers])  # refused before any work
    with writing_into(out.parent, out.parent / f".{out.name}"):
        result = export_with_progress(moe_model, out, target=args.target, plan=args.plan, dtype=args.dtype,
                                      quantize=scheme, moe_prompts=args.moe_prompts, ort_fusions=args.ort_fusions)
    if args.json:
        print_report(result.to_json())
    else:
        Console().print(_lowering_table(result.to_json()))
    return 0


def _lowering_table(report: dict) -> Table:
    quantized = report.get("quantized")
    table = Table(title=f"{report['onnx']}: target {report['target']}, {report['dtype']}" + (
        f", weights {quantized['scheme']} ({quantized['dense']} dense projections as MatMulNBits, "
        f"{quantized['dense_kept_fp32']} kept fp32)" if quantized else "") + (
        ", fused: " + ", ".join(f"{count} {op}" for op, count in report["ort_fusions"].items())
        if report.get("ort_fusions") else "") + (
        f", prompts from {report['prompt_attention']['from_tokens']} tokens: GroupQueryAttention"
        if report.get("prompt_attention") else ""),
        caption=f"decode steps and prompts in two bodies: short inputs ({report['split_by_length']}) run the first"
        if report.get("split_by_length") else None)
    for column in ("layer", "top-k", "GroupedMoE lowered to", "routing", "why"):
        table.add_column(column)
    for layer in report["moe_layers"]:
        lowered_to = layer["lowered_to"] + (f"; {layer['prompts_lowered_to']}" if "prompts_lowered_to" in layer else "")
        table.add_row(str(layer["layer"]), str(layer["top_k"]), lowered_to, layer["routing"], layer.get("reason", ""))
    return table


def run_validate(args: argparse.Namespace) -> int:
    from moe_compile.validate.parity import validate_engine, validate_onnx

    if bool(args.onnx) == bool(args.engine):
        raise InvalidInput("validate: give --onnx model.onnx (from `moe-compile export`) or --engine engine.plan "
                           "(from `moe-compile build`)")
    if args.engine:
        report = validate_engine(load_moe_model(args.model), args.engine, plan=args.plan)
    else:
        report = validate_onnx(load_moe_model(args.model), args.onnx, plan=args.plan)
    print_parity(report, args.json)
    return 0 if report.passed else 1


def run_compile(args: argparse.Namespace) -> int:
    """plan (with --budget) -> rewrite -> export -> parity check in ONNX Runtime; for
    --out engine.plan, commands/build.py's compile_engine (export, build, check the engine).
    All or none: the plan, its plot and the ONNX are staged and kept only if the check passes."""
    out = Path(args.out)
    if out.suffix == ".plan":
        from moe_compile.commands.build import compile_engine

        return compile_engine(args, out)
    if out.suffix != ".onnx":
        raise InvalidInput(f"--out {out}: give model.onnx (ONNX) or engine.plan (TensorRT)")
    from moe_compile.atomic import all_or_none
    from moe_compile.validate.parity import validate_onnx

    with all_or_none(*pipeline_outputs(out, args.budget)) as staging:
        moe_model = load_moe_model(args.model)
        plan = args.plan
        if args.budget is not None:
            plan = write_plan(moe_model, args.budget, out, args.command_line, staging)
        result = export_with_progress(moe_model, staging.path(out), target=args.target or "onnxruntime", plan=plan,
                                      dtype=args.precision)
        Console().print(_lowering_table({**result.to_json(), "onnx": str(out)}))
        report = validate_onnx(moe_model, staging.path(out), plan=plan)
        report.file = str(out)  # where the file will be, not where it is staged while checked
        print_parity(report, as_json=False)
        if report.passed:  # a failed check, an error or a signal: nothing is left, not even the plan
            staging.commit()
    return 0 if report.passed else 1
