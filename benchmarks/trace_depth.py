"""How long a streamed export traces its skeleton as models get deeper: every decoder layer traced
against one layer of each kind traced and copied for the rest (export/repeated_layers.py).

Model: onnx_speed.py's Qwen2-MoE (hidden 512, 16 experts, top-4, a shared expert) at 6, 24 and 48
decoder layers (48: Qwen3-30B-A3B's depth). The trace reads shapes only, so its cost depends on
the layers' structure and count, not their sizes. Each depth in its own process, both ways in
alternating order; seconds of `exporter._trace_streamed` (the default) against `exporter._trace`
of every layer, both unoptimized, as the streamed export runs them. Prints JSON; saves
benchmarks/results/trace_depth.json and .png.

    python benchmarks/trace_depth.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from onnx_speed import CONFIG, write_model  # noqa: E402  (the same model, the same seeds)

RESULTS = Path(__file__).parent / "results"
DEPTHS = (6, 24, 48)
ORDERS = (("one per kind", "every layer"), ("every layer", "one per kind"))


def time_traces(folder: Path, order: tuple[str, ...]) -> dict[str, dict]:
    """In this process: seconds and node count of each way of tracing the model in `folder`."""
    import torch

    from moe_compile.compiler.compiled import skeleton_model
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export import exporter
    from moe_compile.export.lowering import LoweringReport
    from moe_compile.export.repeated_layers import plan_repeats

    moe_model = load_moe_model(folder)
    model, top_k = skeleton_model(moe_model)
    layers = [spec.index for spec in moe_model.layers]
    results = {}
    for way in order:
        report = LoweringReport("onnxruntime")
        start = time.perf_counter()
        if way == "one per kind":
            program = exporter._trace_streamed(model, torch.float32, report, layers, top_k, quantized=False,
                                               sdpa_form=False)
        else:
            program = exporter._trace(model, torch.float32, report, layers, optimize=False)
        results[way] = {"seconds": round(time.perf_counter() - start, 2), "nodes": len(list(program.model.graph))}
    repeats = plan_repeats(model, "onnxruntime", quantized=False)
    results["one per kind"]["traced_layers"] = repeats.traced if repeats else len(model.model.layers)
    return results


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for way, color in (("every layer", "tab:gray"), ("one per kind", "tab:blue")):
        axis.plot([row["layers"] for row in rows], [row[way]["seconds"] for row in rows], "o", color=color,
                  label=f"{way} traced" + (" (the default; the rest copied)" if way == "one per kind" else ""))
    axis.set_xlabel("decoder layers")
    axis.set_ylabel("trace, seconds (one core)")
    axis.set_title("Streamed export: tracing the skeleton")
    axis.set_ylim(bottom=0)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # one depth, one order, in a fresh process
        print(json.dumps(time_traces(Path(sys.argv[2]), ORDERS[int(sys.argv[3])])))
        return
    load_before, rows = os.getloadavg(), []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in DEPTHS:
            folder = Path(tmp) / f"layers{depth}"
            write_model(folder, num_hidden_layers=depth)
            for index in range(len(ORDERS)):
                done = subprocess.run([sys.executable, __file__, "--child", str(folder), str(index)],
                                      capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"layers": depth, "order": list(ORDERS[index]), **result})
                print(json.dumps(rows[-1]), file=sys.stderr)
    from moe_compile.validate.bench import machine_description

    report = {"benchmark": "trace_depth", "command": "python benchmarks/trace_depth.py",
              "device": "CPU (one core: the trace is Python)", "machine": machine_description(1),
              "model": {"model_type": "qwen2_moe", **{k: v for k, v in CONFIG.items() if k != "num_hidden_layers"}},
              "rows": rows, "load_average_before_after": [load_before, os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "trace_depth.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, RESULTS / "trace_depth.png")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
