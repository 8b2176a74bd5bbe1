"""The bench report as a PNG: prefill and decode tokens/s per workload, one bar per backend and
top-k setting, with each bar's min-max range over the repeated runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from moe_compile.plotting import pyplot, save_png


def plot_bench(report: dict, path: str | Path) -> None:
    plt = pyplot()
    rows = report["rows"]
    workloads = sorted({(r["batch"], r["prompt"]) for r in rows})
    series = list(dict.fromkeys((r["backend"], r["setting"]) for r in rows))
    width = 0.8 / len(series)
    figure, axes = plt.subplots(1, 2, figsize=(6 + 1.2 * len(workloads), 4.5))
    for axis, phase in zip(axes, ("prefill", "decode")):
        for i, (backend, setting) in enumerate(series):
            by_workload = {(r["batch"], r["prompt"]): r[f"{phase}_tokens_per_s"] for r in rows
                           if (r["backend"], r["setting"]) == (backend, setting)}
            x = np.arange(len(workloads)) + (i - (len(series) - 1) / 2) * width
            spreads = [by_workload.get(w) for w in workloads]
            heights = [s["median"] if s else np.nan for s in spreads]
            errors = np.array([[s["median"] - s["min"], s["max"] - s["median"]] if s else [0, 0] for s in spreads]).T
            axis.bar(x, heights, width, yerr=errors, capsize=2, label=f"{backend} ({setting})")
        axis.set_xticks(range(len(workloads)), [f"batch {b}\nprompt {p}" for b, p in workloads])
        axis.set_ylabel("tokens / s")
        axis.set_title(f"{phase}")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"moe-compile bench: {report['model']['name']} on {report['machine']['cpu']}"
                    + (f" + {report['machine']['gpu']}" if "gpu" in report["machine"] else ""))
    save_png(figure, path)
