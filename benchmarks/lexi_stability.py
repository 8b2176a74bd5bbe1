"""How many Gaussian draws does the LExI profile need? Δ's ranking and the plan as N grows.

A model whose MoE layers really differ (router sharpness spread over 16x, as trained routers
differ in entropy) is profiled with N = 1, 2, 4, ... draws and with a reference N = 64. For
each N: the Spearman correlation of the per-(layer, k) marginal costs Δ_j(k) - Δ_j(k+1) with
the reference, the share of layers whose planned k matches the reference plan, and the
plan's regret (its ΣΔ under the reference profile over the reference plan's ΣΔ, minus 1).
Prints JSON; saves JSON and a PNG under benchmarks/results/.

    python benchmarks/lexi_stability.py
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from moe_compile.compiler.ir import ExpertWeights, MoELayerSpec, SharedExpertSpec
from moe_compile.compiler.lexi.profile import ProfileOptions, layer_deltas
from moe_compile.compiler.lexi.search import LayerChoices, solve_dp, total_delta
from moe_compile.grouped_moe_op import GroupedMoEAttributes

LAYERS, EXPERTS, HIDDEN, INTER, TOP_K = 12, 16, 256, 128, 4
DRAWS = [1, 2, 4, 8, 16, 32]
REFERENCE_DRAWS = 64
BUDGETS = [0.5, 0.75]
RESULTS = Path(__file__).parent / "results"


def heterogeneous_layers(seed: int = 0) -> list[tuple[MoELayerSpec, ExpertWeights]]:
    generator = torch.Generator().manual_seed(seed)
    sharpness = np.geomspace(0.25, 4.0, LAYERS)[np.random.default_rng(seed).permutation(LAYERS)]
    layers = []
    for index in range(LAYERS):
        weights = ExpertWeights(
            router_weight=torch.randn(EXPERTS, HIDDEN, generator=generator) * float(sharpness[index]) / HIDDEN ** 0.5,
            gate_up=torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=generator) / HIDDEN ** 0.5,
            down=torch.randn(EXPERTS, HIDDEN, INTER, generator=generator) / INTER ** 0.5)
        spec = MoELayerSpec(index=index, module_path=f"model.layers.{index}.mlp", hidden=HIDDEN, intermediate=INTER,
                            num_experts=EXPERTS, attributes=GroupedMoEAttributes(top_k=TOP_K),
                            shared_expert=SharedExpertSpec(INTER, gated=True), parameter_bytes=weights.nbytes,
                            load_weights=functools.partial(lambda w: w, weights))
        layers.append((spec, weights))
    return layers


def profile(layers, draws: int) -> tuple[list[dict[int, float]], float]:
    options = replace(ProfileOptions(), draws=draws)
    started = time.perf_counter()
    deltas = [layer_deltas(spec, weights, options) for spec, weights in layers]
    return deltas, (time.perf_counter() - started) / len(layers)


def marginals(deltas: list[dict[int, float]]) -> np.ndarray:
    return np.array([d[k] - d[k + 1] for d in deltas for k in range(1, TOP_K)])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = a.argsort().argsort(), b.argsort().argsort()
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def plan(deltas: list[dict[int, float]], fraction: float) -> list[int]:
    choices = [LayerChoices(cost={k: float(k) for k in d}, delta=d) for d in deltas]
    return solve_dp(choices, int(fraction * TOP_K * LAYERS + 0.5))


def main() -> None:
    layers = heterogeneous_layers()
    reference, _ = profile(layers, REFERENCE_DRAWS)
    ref_choices = [LayerChoices(cost={k: float(k) for k in d}, delta=d) for d in reference]
    rows = []
    for draws in DRAWS:
        deltas, seconds = profile(layers, draws)
        row = {"draws": draws, "seconds_per_layer": seconds,
               "spearman_marginal_delta": spearman(marginals(deltas), marginals(reference))}
        for fraction in BUDGETS:
            ks, ref_ks = plan(deltas, fraction), plan(reference, fraction)
            row[f"plan_{fraction}_same_k_share"] = float(np.mean(np.array(ks) == np.array(ref_ks)))
            row[f"plan_{fraction}_regret"] = total_delta(ref_choices, ks) / total_delta(ref_choices, ref_ks) - 1
        rows.append(row)
    result = {
        "benchmark": "lexi_stability",
        "device": f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "model": {"moe_layers": LAYERS, "experts": EXPERTS, "hidden": HIDDEN, "intermediate": INTER, "top_k": TOP_K,
                  "router_sharpness": "geomspace(0.25, 4) over layers, shuffled"},
        "profile_options": {k: v for k, v in ProfileOptions().__dict__.items() if k != "draws"},
        "reference_draws": REFERENCE_DRAWS,
        "rows": rows,
        "command": "python benchmarks/lexi_stability.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lexi_stability.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "lexi_stability.png")
    print(json.dumps(result, indent=2))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draws = [row["draws"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(draws, [row["spearman_marginal_delta"] for row in rows], marker="o")
    left.set(xscale="log", xlabel="draws N", ylabel="Spearman vs N=64", title="ranking of marginal Δ")
    for fraction in BUDGETS:
        right.plot(draws, [100 * row[f"plan_{fraction}_regret"] for row in rows], marker="o", label=f"budget {fraction}")
    right.set(xscale="log", xlabel="draws N", ylabel="regret (%)", title="plan's ΣΔ over the N=64 plan's")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
