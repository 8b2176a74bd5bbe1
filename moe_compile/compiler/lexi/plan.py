"""The LExI plan: from a profile and a budget to per-layer top-k, and the plan file.

The file is DESIGN.md's contract: `schema`, `model` (fingerprint), `budget`, and
`layers: [{index, base_top_k, top_k, sensitivity}]`, plus the predicted cost and the command
that made it. It holds no timestamps: the same inputs and seed give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from moe_compile.compiler.fingerprint import check_same_model
from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.rewrite import rewrite_model
from moe_compile.errors import InvalidInput
from moe_compile.jsonio import read_json_object

from .profile import Profile
from .search import LayerChoices, solve_dp, solve_ga, total_cost, total_delta
from .verify import guard, refine

PLAN_SCHEMA = "moe-compile/plan/v1"
SOLVERS = ("dp", "ga")


@dataclass(frozen=True)
class Budget:
    """Exactly one of `fraction` (of the cost at the base top-k), `sum_k` or `target_ms`."""

    fraction: float | None = None
    sum_k: int | None = None
    target_ms: float | None = None

    def limit(self, base_cost: float, integral: bool) -> float:
        if self.fraction is not None:
            scaled = self.fraction * base_cost
            return float(int(scaled + 0.5)) if integral else scaled  # the paper's round(F * Σ k_base)
        return float(self.sum_k if self.sum_k is not None else self.target_ms)

    def describe(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def layer_choices(moe_model: MoEModel, profile: Profile, cost_model, k_min: int) -> list[LayerChoices]:
    choices = []
    for spec, sensitivity in zip(moe_model.layers, profile.layers):
        ks = list(range(k_min, spec.base_top_k + 1))
        choices.append(LayerChoices(cost=cost_model.costs(spec, ks), delta={k: sensitivity.delta[k] for k in ks}))
    return choices


def make_plan(
    moe_model: MoEModel,
    profile: Profile,
    budget: Budget,
    cost_model,
    solver: str = "dp",
    k_min: int = 1,
    seed: int = 0,
    command: str = "",
    objective: Callable[[list[int]], float] | None = None,
    refine_passes: int = 0,
    keep_searched: bool = False,
) -> dict:
    """Solve stage 2 and return the plan document. With `objective` (a plan's real loss, e.g.
    kl_profile.OutputObjective.kl over the ks), the searched plan is refined by up to
    `refine_passes` rounds of local search and guarded against the uniform plan (verify.py)."""
    choices = layer_choices(moe_model, profile, cost_model, k_min)
    base_ks = [spec.base_top_k for spec in moe_model.layers]
    base_cost = total_cost(choices, base_ks)
    # Measured costs need not grow with k (timer noise on small layers): the floor is each layer's cheapest k.
    cheapest_ks = [min(layer.ks, key=lambda k: (layer.cost[k], k)) for layer in choices]
    min_cost = total_cost(choices, cheapest_ks)
    limit = budget.limit(base_cost, integral=cost_model.unit == "experts")
    unit = cost_model.unit
    if limit < min_cost - 1e-12:
        floor = (f"every layer at k={k_min}" if set(cheapest_ks) == {k_min}
                 else f"each layer at its cheapest k {cheapest_ks}")
        raise InvalidInput(f"the budget ({limit:g} {unit}) is below the least possible cost "
                           f"({min_cost:g} {unit}, {floor})")
    if limit > base_cost + 1e-12:
        raise InvalidInput(f"the budget ({limit:g} {unit}) is above the cost at the base top-k ({base_cost:g} {unit})")
    if solver == "dp":
        ks = solve_dp(choices, limit)
    elif solver == "ga":
        ks = solve_ga(choices, limit, seed=seed)
    else:
        raise InvalidInput(f"solver '{solver}' is not one of {', '.join(SOLVERS)}")
    verified = None
    if objective is not None:
        searched = list(ks)
        ks, score, moves = refine(ks, choices, limit, objective, refine_passes)
        ks, verified = guard(ks, score, choices, limit, base_ks, k_min, objective, keep_searched)
        verified = {"dp_top_k": searched, "refine_passes": refine_passes, "refine_moves": moves, **verified}
    return {
        "schema": PLAN_SCHEMA,
        "model": moe_model.fingerprint,
        "budget": {**budget.describe(), "objective": cost_model.name, "unit": unit, "limit": limit,
                   "base_cost": base_cost, "min_cost": min_cost, "cost": total_cost(choices, ks)},
        "solver": {"name": solver, **({"seed": seed} if solver == "ga" else {})},
        "cost_model": cost_model.describe(),
        "profile": asdict(profile.options),
        "layers": [
            {"index": spec.index, "base_top_k": spec.base_top_k, "top_k": k,
             "sensitivity": {str(kk): d for kk, d in sorted(sensitivity.delta.items())},
             "cost": layer.cost[k]}
            for spec, sensitivity, layer, k in zip(moe_model.layers, profile.layers, choices, ks)
        ],
        "predicted": {"sum_k": sum(ks), "base_sum_k": sum(base_ks), "delta": total_delta(choices, ks),
                      "cost": total_cost(choices, ks), "base_cost": base_cost, "unit": unit},
        **({"verified": verified} if verified is not None else {}),
        "command": command,
    }


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def load_plan(path: str | Path, moe_model: MoEModel) -> dict[int, int]:
    """Read a plan file for `moe_model` and return {layer index: top_k}; refuse anything else."""
    doc = read_json_object(path, "plan")
    if doc.get("schema") != PLAN_SCHEMA:
        raise InvalidInput(f"{path} is not a moe-compile plan (schema {PLAN_SCHEMA!r} expected, "
                           f"found {doc.get('schema')!r})")
    check_same_model(doc.get("model"), moe_model, str(path))
    top_k = _planned_top_k(doc.get("layers"), path)
    expected = [spec.index for spec in moe_model.layers]
    if sorted(top_k) != expected:
        raise InvalidInput(f"{path} lists layers {sorted(top_k)}, but the model's MoE layers are {expected}")
    for spec in moe_model.layers:
        k = top_k[spec.index]
        if isinstance(k, bool) or not isinstance(k, int):
            raise InvalidInput(f"{path}: layer {spec.index} has top_k {k!r}, not a whole number")
        try:
            spec.attributes.with_top_k(k).validate(spec.num_experts)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: layer {spec.index}: {exc}") from None
    return top_k


def _planned_top_k(layers: object, path: str | Path) -> dict[int, object]:
    """The plan's `layers` -> {index: top_k as written}; the top_k values are checked later."""
    if not isinstance(layers, list) or not all(isinstance(layer, dict) and "index" in layer and "top_k" in layer
                                               for layer in layers):
        raise InvalidInput(f"{path}: malformed layers (expected a list of {{\"index\": ..., \"top_k\": ...}})")
    top_k: dict[int, object] = {}
    for layer in layers:
        index = layer["index"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise InvalidInput(f"{path}: malformed layers (index {index!r} is not a whole number)")
        if index in top_k:
            raise InvalidInput(f"{path}: malformed layers (layer {index} is listed twice)")
        top_k[index] = layer["top_k"]
    return top_k


def apply_plan(model: nn.Module, moe_model: MoEModel, path: str | Path) -> nn.Module:
    """Rewrite `model` to the plan's per-layer top-k."""
    return rewrite_model(model, moe_model, load_plan(path, moe_model))
