"""`moe-compile build` (model.onnx -> engine.plan) and the whole pipeline to an engine
(`moe-compile MODEL --out engine.plan`)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_compile.jsonio import print_report


def run_build(args: argparse.Namespace) -> int:
    from moe_compile.plugins.tensorrt.builder import build_engine

    sizes = {name: value for name, value in (("max_batch", args.max_batch), ("max_seq", args.max_seq)) if value}
    summary = build_engine(args.onnx, args.out, precision=args.precision, timing_cache=args.timing_cache, **sizes)
    if args.json:
        print_report(summary.to_json())
    else:
        Console().print(summary_table(summary.to_json()))
    return 0


def summary_table(summary: dict) -> Table:
    table = Table(title=f"{summary['engine']}: TensorRT {summary['tensorrt']}, {summary['precision'] or 'mixed'} "
                        f"(from {summary['onnx']}, {summary['build_seconds']:.1f} s)", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("layers", str(summary["layers"]))
    plugins = summary["plugin_layers"]
    table.add_row("plugin layers", ", ".join(f"{op} x{count}" for op, count in plugins.items()) or "none")
    table.add_row("GroupedMoE nodes in the ONNX", str(summary["grouped_moe_nodes"]))
    table.add_row("device memory", f"{summary['device_memory_bytes'] / 2**20:.1f} MiB")
    table.add_row("engine file", f"{summary['engine_bytes'] / 2**20:.1f} MiB")
    for profile, inputs in summary["profiles"].items():
        for name, shape in _grouped_profile(inputs):
            table.add_row(f"{profile} profile {name}", f"min {shape['min']}  opt {shape['opt']}  max {shape['max']}")
    if summary["timing_cache"]:
        table.add_row("timing cache", summary["timing_cache"])
    return table


def _grouped_profile(profile: dict) -> list[tuple[str, dict]]:
    """The KV-cache inputs as one row (they share one range)."""
    past = [name for name in profile if name.startswith("past_key_values.")]
    rows = [(name, shape) for name, shape in profile.items() if name not in past]
    return rows + ([(f"past_key_values.* ({len(past)})", profile[past[0]])] if past else [])


def compile_engine(args: argparse.Namespace, out: Path) -> int:
    """plan (with --budget) -> rewrite -> export --target tensorrt (a temporary ONNX beside --out)
    -> build -> a short parity check of the engine. TensorRT and a GPU are checked first, so a
    machine without them stops at once and writes nothing."""
    from moe_compile.atomic import all_or_none
    from moe_compile.commands.exporting import export_with_progress
    from moe_compile.commands.lexi import pipeline_outputs, write_plan
    from moe_compile.commands.parity_table import print_parity
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.errors import InvalidInput
    from moe_compile.plugins.tensorrt.builder import DEFAULT_MAX_SEQ, build_engine, require_tensorrt
    from moe_compile.validate.parity import validate_engine

    if args.target not in (None, "tensorrt"):
        raise InvalidInput(f"--target {args.target}: an engine is built from the tensorrt target; "
                           "give --out model.onnx for other targets")
    require_tensorrt(f"--out {out.name} (a TensorRT engine)")
    with all_or_none(*pipeline_outputs(out, args.budget)) as staging:
        moe_model = load_moe_model(args.model)
        plan = args.plan
        if args.budget is not None:
            plan = write_plan(moe_model, args.budget, out, args.command_line, staging)
        engine = staging.path(out)
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.onnx.", dir=out.parent) as folder:
            onnx_path = Path(folder) / "model.onnx"
            export_with_progress(moe_model, onnx_path, target="tensorrt", plan=plan, dtype=args.precision)
            # the engine's context: build's default, or the model's own when that is shorter
            context = min(DEFAULT_MAX_SEQ, getattr(moe_model.config, "max_position_embeddings", None) or DEFAULT_MAX_SEQ)
            summary = build_engine(onnx_path, engine, precision=args.precision, max_seq=context)
        Console().print(summary_table({**summary.to_json(), "engine": str(out)}))
        report = validate_engine(moe_model, engine, plan=plan, new_tokens=8)
        print_parity(report, as_json=False)
        if report.passed:  # a failed check, an error or a signal: nothing is left, not even the plan
            staging.commit()
    return 0 if report.passed else 1
