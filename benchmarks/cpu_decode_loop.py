"""How a CPU decode loop hands the KV cache from one ONNX Runtime step to the next: through an
IOBinding with the outputs bound to the CPU (how `OnnxRuntimeRunner.infer_keeping` did it before
2026-12-06) against a plain `session.run`, whose numpy outputs are views of ONNX Runtime's own
buffers (how it does it now). Both hand the cache on without a numpy copy; the question is what
each costs a step, at a short and a long cache.

onnx_speed.py's model (Qwen2-MoE style, hidden 512, 6 layers, 16 experts, top-4, shared expert),
exported fp32 and int4; one session per file; batch 1, greedy steps after a 128- and a
2048-token prompt timed by validate/timing.time_decode (bench's own loop); the two ways in each
of ROUNDS rounds, the order reversed every other round. Prints JSON; saves it under
benchmarks/results/.

    python benchmarks/cpu_decode_loop.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from onnx_speed import CONFIG, THREADS, write_model  # noqa: E402  (the same model, the same seeds)

from moe_compile.compiler.loader import load_moe_model  # noqa: E402
from moe_compile.export.exporter import export_onnx  # noqa: E402
from moe_compile.quantization.scheme import quant_scheme  # noqa: E402
from moe_compile.validate.bench import in_rounds, machine_description  # noqa: E402
from moe_compile.validate.runners import OnnxRuntimeRunner  # noqa: E402
from moe_compile.validate.timing import time_decode  # noqa: E402

PROMPTS, STEPS, REPEATS, ROUNDS = (128, 2048), 32, 3, 4
RESULTS = Path(__file__).parent / "results"


class IOBindingOnCpu:
    """The runner's former CPU path, kept here as the alternative measured: every output bound
    to the CPU through an IOBinding (`OnnxRuntimeRunner.infer_bound`), the cache handed on as
    OrtValues."""

    def __init__(self, runner: OnnxRuntimeRunner) -> None:
        self.runner = runner

    def infer_keeping(self, feed: dict, keep: list[str]) -> dict:
        return self.runner.infer_bound(feed, keep, "cpu")


def step_ms(loop, runner: OnnxRuntimeRunner, prompt_length: int) -> float:
    prompt = np.random.default_rng(prompt_length).integers(0, CONFIG["vocab_size"], (1, prompt_length))
    timing = time_decode(loop, prompt, list(runner.empty_past(1).values()), steps=STEPS, repeats=REPEATS)
    return round(timing.run_seconds.median / STEPS * 1e3, 3)


def main() -> None:
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder)
        ir = load_moe_model(folder)
        for scheme in ("fp32", "int4"):
            path = Path(tmp) / f"{scheme}.onnx"
            quantize = None if scheme == "fp32" else quant_scheme(scheme, None, ir.config.hidden_size,
                                                                   [spec.intermediate for spec in ir.layers])
            export_onnx(ir, path, target="onnxruntime", quantize=quantize)
            runner = OnnxRuntimeRunner(path, threads=THREADS)
            loops = {"iobinding on the cpu": IOBindingOnCpu(runner), "plain run": runner}
            for prompt_length in PROMPTS:
                rounds = {name: [] for name in loops}
                for _, name in in_rounds(list(loops), ROUNDS):
                    rounds[name].append(step_ms(loops[name], runner, prompt_length))
                ratios = [old / new for old, new in zip(rounds["iobinding on the cpu"], rounds["plain run"])]
                results[f"{scheme} after {prompt_length}"] = {
                    "step_ms_each_round": rounds,
                    "step_ms_median": {name: statistics.median(values) for name, values in rounds.items()},
                    "iobinding_over_plain": {"median": round(statistics.median(ratios), 3),
                                             "min": round(min(ratios), 3), "max": round(max(ratios), 3)}}
            del runner
    report = {
        "benchmark": "cpu_decode_loop",
        "machine": machine_description(THREADS),
        "load_average_before_after": [load_before, os.getloadavg()],
        "model": {"model_type": "qwen2_moe", **CONFIG},
        "workload": {"batch": 1, "prompts": PROMPTS, "steps": STEPS, "repeats": REPEATS, "rounds": ROUNDS},
        "results": results,
        "command": "python benchmarks/cpu_decode_loop.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_decode_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"load": report["load_average_before_after"], "results": results}, indent=2))


if __name__ == "__main__":
    main()
