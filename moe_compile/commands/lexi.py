"""`moe-compile profile` (LExI stage 1) and `moe-compile plan` (stage 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_compile.atomic import Staging, all_or_none
from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.lexi.cost import ActiveExperts, MeasuredLatency, RooflineLatency
from moe_compile.compiler.lexi.plan import Budget, dumps, make_plan
from moe_compile.jsonio import print_report, read_json_object
from moe_compile.compiler.lexi.plots import plot_plan, plot_profile
from moe_compile.compiler.lexi.profile import Profile, ProfileOptions, profile_from_json, profile_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput


def profile_options(args: argparse.Namespace) -> ProfileOptions:
    return ProfileOptions(batch=args.batch, seq_len=args.seq_len, draws=args.draws, seed=args.seed,
                          scale=args.scale, k_min=args.k_min)


def _plot_path(out: str) -> Path:
    """The PNG written beside a JSON output: plan.json -> plan.png."""
    return Path(out).with_suffix(".png")


def run_profile(args: argparse.Namespace) -> int:
    with all_or_none(args.out, _plot_path(args.out)) as staging:
        moe_model = load_moe_model(args.model)
        doc = profile_model(moe_model, profile_options(args)).to_json()
        plot_profile(doc, staging.path(_plot_path(args.out)))
        staging.path(args.out).write_text(dumps(doc))
        staging.commit()
    if args.json:
        print_report(doc)
    else:
        Console().print(_sensitivity_table(doc["layers"], title=f"LExI Δ(k), written to {args.out}"))
    return 0


def _cost_model(args: argparse.Namespace):
    if args.objective == "sum-k":
        if args.target_ms is not None:
            raise InvalidInput("--target-ms goes with --objective latency")
        return ActiveExperts()
    if args.sum_k is not None:
        raise InvalidInput("--sum-k goes with --objective sum-k; give --budget or --target-ms for latency")
    if args.cost_model == "measured":
        import torch

        return MeasuredLatency(tokens=args.tokens, device="cuda" if torch.cuda.is_available() else "cpu")
    return RooflineLatency(device=args.cost_model.removeprefix("roofline-"), tokens=args.tokens)


def _profile_for_plan(args: argparse.Namespace, moe_model: MoEModel) -> Profile:
    options = profile_options(args)
    if args.profile:
        return profile_from_json(read_json_object(args.profile, "profile"), moe_model, args.profile, options)
    return profile_model(moe_model, options)


def run_plan(args: argparse.Namespace) -> int:
    with all_or_none(args.out, _plot_path(args.out)) as staging:
        moe_model = load_moe_model(args.model)
        cost_model = _cost_model(args)
        budget = Budget(fraction=args.budget, sum_k=args.sum_k, target_ms=args.target_ms)
        if budget == Budget():
            raise InvalidInput("give --budget FRACTION, --sum-k N or (with --objective latency) --target-ms MS")
        profile = _profile_for_plan(args, moe_model)
        doc = make_plan(moe_model, profile, budget, cost_model, solver=args.solver, k_min=args.k_min,
                        seed=args.seed, command=args.command_line)
        plot_plan(doc, staging.path(_plot_path(args.out)))
        staging.path(args.out).write_text(dumps(doc))
        staging.commit()
    if args.json:
        print_report(doc)
    else:
        predicted = doc["predicted"]
        title = (f"LExI plan: Σk {predicted['sum_k']} of {predicted['base_sum_k']}, cost "
                 f"{predicted['cost']:.4g} of {predicted['base_cost']:.4g} {predicted['unit']}, "
                 f"ΣΔ {predicted['delta']:.4g}; written to {args.out}")
        Console().print(_sensitivity_table(doc["layers"], title=title, chosen=True))
    return 0


def _sensitivity_table(layers: list[dict], title: str, chosen: bool = False) -> Table:
    ks = sorted({int(k) for layer in layers for k in layer["sensitivity"]})
    table = Table(title=title)
    table.add_column("layer", justify="right")
    table.add_column("base k", justify="right")
    if chosen:
        table.add_column("top-k", justify="right", style="bold")
    for k in ks:
        table.add_column(f"Δ(k={k})", justify="right")
    for layer in layers:
        cells = [str(layer["index"]), str(layer["base_top_k"])] + ([str(layer["top_k"])] if chosen else [])
        cells += [f"{layer['sensitivity'][str(k)]:.4g}" if str(k) in layer["sensitivity"] else "" for k in ks]
        table.add_row(*cells)
    return table


def pipeline_plan_path(out: Path) -> Path:
    """Where the pipeline's LExI plan goes: beside --out, model.onnx -> model.lexi-plan.json (+ .png)."""
    return out.with_name(f"{out.stem}.lexi-plan.json")


def pipeline_outputs(out: Path, budget: float | None) -> list[Path]:
    """Every file the pipeline writes: --out, and with --budget its plan and the plan's plot."""
    plan = pipeline_plan_path(out)
    return [out, *([plan, plan.with_suffix(".png")] if budget is not None else [])]


def write_plan(moe_model, budget: float, out: Path, command: str, staging: Staging) -> Path:
    """The pipeline's LExI plan (default profile, --budget of the active experts), staged with
    --out (committed only if the whole pipeline succeeds); returns the staged plan's path."""
    options = ProfileOptions()
    doc = make_plan(moe_model, profile_model(moe_model, options), Budget(fraction=budget), ActiveExperts(),
                    command=command)
    path = pipeline_plan_path(out)
    plot_plan(doc, staging.path(path.with_suffix(".png")))
    staging.path(path).write_text(dumps(doc))
    print(f"LExI plan: Σk {doc['predicted']['sum_k']} of {doc['predicted']['base_sum_k']} ({path})")
    return staging.path(path)
