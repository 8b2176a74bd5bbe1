"""Tokens/s of the weight-quantized exports against the fp32 one and PyTorch eager, in one run on
one machine, 2 threads each: benchmarks/onnx_speed.py's model (Qwen2-MoE style, hidden 512,
6 layers, 16 experts, top-4, shared expert, seeded random weights), exported fp32, int8 and int4
(`export --quantize`, default block size), measured by `moe-compile bench`'s own code.

Workloads: batch 1 with a 128-token prompt then 32 decode steps; batch 8, 128 tokens, 16 steps;
batch 1, a 512-token and a 2048-token prompt (prefill). Each backend is timed in each of ROUNDS
rounds, the order reversed every other round, and each speed-up is the median of the rounds' own
ratios (their range beside it). Prints JSON; saves it and a plot under benchmarks/results/.

    python benchmarks/quantize_speed.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from onnx_speed import CONFIG, THREADS, write_model  # noqa: E402  (the same model, the same seeds)

from moe_compile.compiler.loader import load_moe_model  # noqa: E402
from moe_compile.export.exporter import export_onnx  # noqa: E402
from moe_compile.quantization.scheme import quant_scheme  # noqa: E402
from moe_compile.validate.backends import BenchModel, TopKSetting, select_backends  # noqa: E402
from moe_compile.validate import bench  # noqa: E402
from moe_compile.validate.bench_plot import plot_bench  # noqa: E402

WORKLOADS = [bench.Workload(1, 128, 32), bench.Workload(8, 128, 16), bench.Workload(1, 512, 4),
             bench.Workload(1, 2048, 4)]
REPEATS = 3
ROUNDS = 3  # every backend timed in each round, the order reversed every other round (bench.in_rounds)
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder)
        ir = load_moe_model(folder)
        base = {spec.index: spec.base_top_k for spec in ir.layers}
        files = {}
        for scheme in ("fp32", "int8", "int4"):
            files[scheme] = Path(tmp) / f"{scheme}.onnx"
            quantize = None if scheme == "fp32" else quant_scheme(scheme, None, ir.config.hidden_size,
                                                                   [spec.intermediate for spec in ir.layers])
            export_onnx(ir, files[scheme], target="onnxruntime", quantize=quantize)
        rows = []
        (transformers,) = select_backends(["transformers"], None)
        (ort_cpu,) = select_backends(["onnxruntime-cpu"], None)
        runs = [(transformers, TopKSetting("base", base))] + [(ort_cpu, TopKSetting(scheme, base)) for scheme in files]
        model = BenchModel(ir, "fp32", THREADS, onnx_files=files)
        try:
            for number, (backend, setting) in bench.in_rounds(runs, ROUNDS):
                rows += bench.measure(backend, setting, model, WORKLOADS, repeats=REPEATS, round_number=number)
        finally:
            model.close()
    bench.add_speedups(rows)
    round_rows, rows = rows, bench.pooled_rounds(rows)
    summary = {f"{r['backend']}/{r['setting']} b{r['batch']} p{r['prompt']}":
               {"prefill_tokens_per_s": r["prefill_tokens_per_s"]["median"],
                "decode_tokens_per_s": r["decode_tokens_per_s"]["median"], "vs_eager": r["vs_transformers"],
                "vs_eager_range": r["vs_transformers_range"]}
               for r in rows}
    report = {
        "benchmark": "quantize_speed",
        "machine": bench.machine_description(THREADS),
        "load_average_before_after": [load_before, os.getloadavg()],
        "model": {"model_type": "qwen2_moe", **CONFIG},
        "workloads": [w.__dict__ for w in WORKLOADS], "repeats": REPEATS, "rounds": ROUNDS,
        "summary": summary, "rows": rows, "round_rows": round_rows,
        "command": "python benchmarks/quantize_speed.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_bench({"rows": rows, "model": {"name": "onnx_speed.py model"}, "machine": report["machine"]},
               RESULTS / "quantize_speed.png")
    print(json.dumps({"load": report["load_average_before_after"], "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
