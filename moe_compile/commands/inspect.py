"""`moe-compile inspect MODEL [--json]`: the MoE IR, and per layer what `export` lowers its
GroupedMoE to on each target (the same `choose_lowering` the export runs)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from moe_compile.compiler.lexi.plan import load_plan
from moe_compile.compiler.loader import load_moe_model
from moe_compile.compiler.summary import model_summary
from moe_compile.export.lowering import TARGETS, choose_lowering
from moe_compile.jsonio import print_report


def run_inspect(args: argparse.Namespace) -> int:
    moe_model = load_moe_model(args.model)
    summary = model_summary(moe_model, load_plan(args.plan, moe_model) if args.plan else None)
    for layer, spec in zip(summary["layers"], moe_model.layers):
        layer["lowering"] = {target: choose_lowering(target, spec.attributes, spec.has_score_bias,
                                                     intermediate=spec.intermediate).as_dict()
                             for target in TARGETS}
    if args.json:
        print_report(summary)
    else:
        Console().print(_layer_table(summary))
    return 0


def _layer_table(summary: dict) -> Table:
    table = Table(title=f"{summary['model_type']}: {len(summary['layers'])} MoE layers of "
                        f"{summary['num_hidden_layers']} ({summary['model']})")
    columns = {"index": "layer", "experts": "experts", "top_k": "top-k", "hidden": "hidden",
               "intermediate": "interm.", "shared_intermediate": "shared", "parameter_bytes": "bytes"}
    if "planned_top_k" in summary["layers"][0]:
        columns = {**dict(list(columns.items())[:3]), "planned_top_k": "plan k", **dict(list(columns.items())[3:])}
    for header in columns.values():
        table.add_column(header, justify="right")
    table.add_column("on onnxruntime")
    for layer in summary["layers"]:
        table.add_row(*(_human_bytes(layer[c]) if c == "parameter_bytes" else str(layer[c]) for c in columns),
                      _lowering_cell(layer["lowering"]["onnxruntime"]))
    return table


def _lowering_cell(lowering: dict) -> str:
    if lowering["lowered_to"] == "standard":
        return f"standard ops ({lowering['reason']})"
    routing = "" if lowering["routing"] == "in the op" else ", routed in standard ops"
    prompts = f"; {lowering['prompts_lowered_to']}" if "prompts_lowered_to" in lowering else ""
    return lowering["lowered_to"] + prompts + routing


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"
