"""`moe-compile export`, `moe-compile validate` and the whole pipeline (`moe-compile MODEL --out`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput


def run_export(args: argparse.Namespace) -> int:
    from moe_compile.export.exporter import export_onnx

    result = export_onnx(load_moe_model(args.model), args.out, target=args.target, plan=args.plan, dtype=args.dtype)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        Console().print(_lowering_table(result.to_json()))
    return 0


def _lowering_table(report: dict) -> Table:
    table = Table(title=f"{report['onnx']}: target {report['target']}, {report['dtype']}")
    for column in ("layer", "top-k", "GroupedMoE lowered to", "routing", "why"):
        table.add_column(column)
    for layer in report["moe_layers"]:
        table.add_row(str(layer["layer"]), str(layer["top_k"]), layer["lowered_to"], layer["routing"],
                      layer.get("reason", ""))
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


_RUNTIMES = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}


def print_parity(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        table = Table(title=f"parity: PyTorch vs {_RUNTIMES[report.runtime]}, {report.file} ({report.target}, "
                            f"{report.dtype}, rtol {report.tolerance['rtol']:g}, atol {report.tolerance['atol']:g})")
        for column in ("step", "output", "max |diff|", "max rel", "ok"):
            table.add_column(column)
        for step, diffs in (("prefill", report.prefill), ("decode", report.decode), ("layer", report.layer_diffs)):
            for name, group in _grouped(diffs):
                worst = max(group, key=lambda diff: diff.max_abs)
                table.add_row(step, name, f"{worst.max_abs:.3g}", f"{max(d.max_rel for d in group):.3g}",
                              "yes" if all(d.passed for d in group) else "NO")
        Console().print(table)
        print(f"greedy generation of {report.generated_tokens} tokens: "
              + ("identical" if report.generation_identical else
                 f"differs from token {report.first_generation_difference}"))
    if not report.passed:
        where = (f"; first diverging MoE layer: {report.first_diverging_layer}"
                 if report.first_diverging_layer is not None else "")
        print(f"moe-compile: validate: {report.file} does not match the PyTorch reference{where}", file=sys.stderr)


def _grouped(diffs: list) -> list[tuple[str, list]]:
    """The KV-cache outputs as one row (`present.* (16)`), unless one of them fails."""
    present = [d for d in diffs if d.name.startswith("present.")]
    rest = [(d.name, [d]) for d in diffs if not d.name.startswith("present.")]
    if not present:
        return rest
    if all(d.passed for d in present):
        return rest + [(f"present.* ({len(present)})", present)]
    return rest + [(d.name, [d]) for d in present]


def run_compile(args: argparse.Namespace) -> int:
    """plan (with --budget) -> rewrite -> export -> parity check in ONNX Runtime; for
    --out engine.plan, commands/build.py's compile_engine (export, build, check the engine)."""
    out = Path(args.out)
    if out.suffix == ".plan":
        from moe_compile.commands.build import compile_engine

        return compile_engine(args, out)
    if out.suffix != ".onnx":
        raise InvalidInput(f"--out {out}: give model.onnx (ONNX) or engine.plan (TensorRT)")
    from moe_compile.atomic import check_writable
    from moe_compile.export.exporter import export_onnx
    from moe_compile.validate.parity import validate_onnx

    check_writable(out)
    moe_model = load_moe_model(args.model)
    plan = args.plan
    if args.budget is not None:
        plan = write_plan(moe_model, args.budget, out, args.command_line)
    result = export_onnx(moe_model, out, target=args.target or "onnxruntime", plan=plan, dtype=args.precision)
    Console().print(_lowering_table(result.to_json()))
    report = validate_onnx(moe_model, out, plan=plan)
    print_parity(report, as_json=False)
    return 0 if report.passed else 1


def write_plan(moe_model, budget: float, out: Path, command: str) -> Path:
    from moe_compile.atomic import write_text_atomic
    from moe_compile.compiler.lexi.cost import ActiveExperts
    from moe_compile.compiler.lexi.plan import Budget, dumps, make_plan
    from moe_compile.compiler.lexi.plots import plot_plan
    from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model

    options = ProfileOptions()
    doc = make_plan(moe_model, profile_model(moe_model, options), Budget(fraction=budget), ActiveExperts(),
                    command=command)
    path = out.with_name(f"{out.stem}.lexi-plan.json")
    plot_plan(doc, path.with_suffix(".png"))
    write_text_atomic(path, dumps(doc))
    print(f"LExI plan: Σk {doc['predicted']['sum_k']} of {doc['predicted']['base_sum_k']}, written to {path}")
    return path
