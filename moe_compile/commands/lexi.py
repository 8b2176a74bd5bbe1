"""`moe-compile profile` (LExI stage 1) and `moe-compile plan` (stage 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moe_compile.atomic import Staging, all_or_none
from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.layered_model import LOADED_MAX_BYTES, weights_fit
from moe_compile.compiler.lexi.options import DEFAULT_REFINE
from moe_compile.compiler.lexi.cost import ActiveExperts, MeasuredLatency, MeasuredReads, RooflineLatency
from moe_compile.compiler.lexi.plan import Budget, dumps, make_plan
from moe_compile.jsonio import print_report, read_json_object
from moe_compile.compiler.lexi.plots import plot_plan, plot_profile
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_from_json, profile_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput


def default_estimator(moe_model: MoEModel, calibration: str | None) -> str:
    """The estimator chosen by measurement (docs/lexi.md): KL on the model's output, on the
    user's text if given, else on sequences the model samples itself, wherever the model is
    small enough to run whole (`weights_fit`); above that, LExI's data-free Δ, which reads each
    layer once where a KL estimator rereads the checkpoint for every forward pass."""
    if calibration:
        return "calibration"
    return "self-kl" if weights_fit(moe_model) else "lexi"


def profile_options(args: argparse.Namespace, moe_model: MoEModel) -> ProfileOptions:
    estimator = args.estimator or default_estimator(moe_model, args.calibration)
    return ProfileOptions(batch=args.batch, seq_len=args.seq_len, draws=args.draws, seed=args.seed,
                          scale=args.scale, k_min=args.k_min,
                          estimator=estimator, calibration=args.calibration, samples=args.samples,
                          temperature=args.temperature)


def _plot_path(out: str) -> Path:
    """The PNG written beside a JSON output: plan.json -> plan.png."""
    return Path(out).with_suffix(".png")


def run_profile(args: argparse.Namespace) -> int:
    with all_or_none(args.out, _plot_path(args.out)) as staging:
        moe_model = load_moe_model(args.model)
        doc = profile_model(moe_model, profile_options(args, moe_model)).to_json()
        plot_profile(doc, staging.path(_plot_path(args.out)))
        staging.path(args.out).write_text(dumps(doc))
        staging.commit()
    if args.json:
        print_report(doc)
    else:
        Console().print(_sensitivity_table(doc["layers"], title=f"{doc['options']['estimator']} sensitivity, written to {args.out}"))
    return 0


def _cost_model(args: argparse.Namespace, objective: Callable[[], object]):
    """The cost of a layer's k; `objective()` gives the OutputObjective the reads are measured on."""
    if args.objective == "reads":
        if args.budget is None:
            raise InvalidInput("--objective reads takes --budget FRACTION (of the reads at the base top-k)")
        return MeasuredReads(lambda index: objective().block_inputs[index])
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


class LazyObjective:
    """The real objective plans are verified (and reads are measured) on: KL to the base model on
    the calibration text if given, else on sequences the model samples itself. It runs the whole
    model, so it is built on first use, at most once."""

    def __init__(self, moe_model: MoEModel, options: ProfileOptions) -> None:
        self.moe_model, self.options, self._built = moe_model, options, None

    def __call__(self):
        if self._built is None:
            from moe_compile.compiler.lexi.kl_profile import OutputObjective
            from moe_compile.compiler.lexi.profile import check_options

            check_options(self.moe_model, self.options)  # bad options fail before the model is loaded
            self._built = OutputObjective(self.moe_model, self.options)
        return self._built


def searched_plan(moe_model: MoEModel, options: ProfileOptions, objective: LazyObjective, budget: Budget,
                  cost_model, verify: bool, profile_file: str | None = None, **search) -> dict:
    """What `plan` and the pipeline both do: profile (or read `profile_file`), search, and with
    `verify` refine on the real objective and guard against uniform top-k (`make_plan`)."""
    if profile_file:
        profile = profile_from_json(read_json_object(profile_file, "profile"), moe_model, profile_file, options)
    else:  # a KL estimator profiles on the objective; a data-free one reads its layers first
        profile = profile_model(moe_model, options, objective=objective() if options.measures_output else None)
    return make_plan(moe_model, profile, budget, cost_model,
                     objective=objective().plan_kl if verify else None, **search)


def run_plan(args: argparse.Namespace) -> int:
    with all_or_none(args.out, _plot_path(args.out)) as staging:
        moe_model = load_moe_model(args.model)
        options = profile_options(args, moe_model)
        objective = LazyObjective(moe_model, options)
        cost_model = _cost_model(args, objective)
        budget = Budget(fraction=args.budget, sum_k=args.sum_k, target_ms=args.target_ms)
        if budget == Budget():
            raise InvalidInput("give --budget FRACTION, --sum-k N or (with --objective latency) --target-ms MS")
        doc = searched_plan(moe_model, options, objective, budget, cost_model, _verifies(args, moe_model),
                            args.profile, solver=args.solver, k_min=args.k_min, seed=args.seed,
                            command=args.command_line, refine_passes=args.refine, keep_searched=args.keep_searched)
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
        if "verified" in doc:
            print(_guard_line(doc["verified"]))
        elif not args.no_verify:
            print(_GUARD_SKIPPED)
    return 0


_GUARD_SKIPPED = (f"guard: skipped: the model has more than {LOADED_MAX_BYTES >> 30} GiB of weights, which every "
                  "plan scored would read again (plan --verify runs refine and guard anyway); the plan is not "
                  "compared with uniform top-k")


def _verifies(args: argparse.Namespace, moe_model: MoEModel) -> bool:
    """Refine and guard unless --no-verify, and by default only where scoring a plan is cheap:
    each scored plan is a forward pass that reads the whole checkpoint (layer by layer)."""
    return not args.no_verify and (args.verify or weights_fit(moe_model))


def _guard_line(verified: dict) -> str:
    uniform = "does not fit the budget" if verified["uniform"] is None else f"{verified['uniform']:.5g}"
    if verified["returned"] == "searched":
        why = " (--keep-searched)" if not verified["significantly_better"] else ""
    elif verified["uniform_top_k"] == verified["searched_top_k"]:
        why = " (the same plan)"
    else:
        gain, error = verified["uniform"] - verified["searched"], verified["gain_standard_error"]
        why = (f": the searched plan is not significantly better (gain {gain:.3g} ± {error:.2g} over "
               f"{verified['sequences']} sequences)" if error is not None else ": the searched plan is not better")
    return (f"guard: KL to the base model on the calibration tokens: searched plan {verified['searched']:.5g} "
            f"{verified['searched_top_k']} ({verified['refine_moves']} local-search moves), uniform {uniform} "
            f"{verified['uniform_top_k']}; returned the {verified['returned']} plan{why}")


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
    """The pipeline's plan, made as `plan MODEL --budget F` makes it by default (the default
    estimator, local search and the guard where the model fits), staged with --out (committed
    only if the whole pipeline succeeds); returns the staged plan's path."""
    options = ProfileOptions(estimator=default_estimator(moe_model, None))
    doc = searched_plan(moe_model, options, LazyObjective(moe_model, options), Budget(fraction=budget),
                        ActiveExperts(), weights_fit(moe_model), command=command, refine_passes=DEFAULT_REFINE)
    path = pipeline_plan_path(out)
    plot_plan(doc, staging.path(path.with_suffix(".png")))
    staging.path(path).write_text(dumps(doc))
    print(f"LExI plan: Σk {doc['predicted']['sum_k']} of {doc['predicted']['base_sum_k']}, "
          f"{options.estimator} sensitivity ({path})")
    print(_guard_line(doc["verified"]) if "verified" in doc else _GUARD_SKIPPED)
    return staging.path(path)
