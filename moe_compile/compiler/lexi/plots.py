"""PNG plots of a profile (Δ heatmap) and of a plan (heatmap + chosen k per layer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moe_compile.plotting import pyplot, save_png


def _normalised_heatmap(layers: list[dict]) -> tuple[np.ndarray, list[int]]:
    """Rows: layers; columns: k from 1 to the largest base k; Δ / Δ(k_min) per layer."""
    ks = sorted({int(k) for layer in layers for k in layer["sensitivity"]})
    grid = np.full((len(layers), len(ks)), np.nan)
    for row, layer in enumerate(layers):
        deltas = {int(k): d for k, d in layer["sensitivity"].items()}
        top = max(deltas.values()) or 1.0
        for col, k in enumerate(ks):
            if k in deltas:
                grid[row, col] = deltas[k] / top
    return grid, ks


def _draw_heatmap(axis, layers: list[dict], chosen: list[int] | None = None) -> None:
    grid, ks = _normalised_heatmap(layers)
    image = axis.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
    axis.set_xticks(range(len(ks)), [str(k) for k in ks])
    axis.set_yticks(range(len(layers)), [str(layer["index"]) for layer in layers])
    axis.set_xlabel("top-k")
    axis.set_ylabel("MoE layer")
    axis.figure.colorbar(image, ax=axis, label="Δ(k) / max Δ of the layer")
    if chosen is not None:
        axis.scatter([ks.index(k) for k in chosen], range(len(chosen)), marker="o", s=40,
                     facecolors="none", edgecolors="red", label="chosen k")


def plot_profile(profile_doc: dict, path: Path) -> None:
    plt = pyplot()

    layers = profile_doc["layers"]
    figure, axis = plt.subplots(figsize=(6, 1.5 + 0.3 * len(layers)))
    _draw_heatmap(axis, layers)
    axis.set_title(f"LExI sensitivity, {profile_doc['model']['model_type']}")
    save_png(figure, path)


def plot_plan(plan_doc: dict, path: Path) -> None:
    plt = pyplot()

    layers = plan_doc["layers"]
    chosen = [layer["top_k"] for layer in layers]
    figure, (heat, bars) = plt.subplots(1, 2, figsize=(12, 1.5 + 0.3 * len(layers)))
    _draw_heatmap(heat, layers, chosen)
    heat.set_title("sensitivity and chosen k")
    positions = np.arange(len(layers))
    bars.barh(positions, [layer["base_top_k"] for layer in layers], color="lightgrey", label="base top-k")
    bars.barh(positions, chosen, color="tab:blue", height=0.5, label="LExI top-k")
    bars.set_yticks(positions, [str(layer["index"]) for layer in layers])
    bars.set_xlabel("active experts")
    handles = [h for axis in (heat, bars) for h in axis.get_legend_handles_labels()[0]]
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles))
    predicted = plan_doc["predicted"]
    bars.set_title(f"Σk {predicted['sum_k']} of {predicted['base_sum_k']} "
                   f"({plan_doc['budget']['objective']}, {plan_doc['solver']['name']})")
    save_png(figure, path)
