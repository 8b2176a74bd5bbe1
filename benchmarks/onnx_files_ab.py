"""Two or more ONNX exports of one model, timed against each other in one run: `moe-compile
bench`'s own measurement (validate/bench.measure on ONNX Runtime's CPU provider), each file in
turn, for several rounds, so that the drift of a shared VM falls on all files alike. Used by
moe_prefill_lowering.py (com.microsoft.MoE against sorted experts) and attention_fusion.py
(attention and norms as torch.onnx writes them against ONNX Runtime's fused ops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def prompt_logits(path: Path, vocab_size: int, tokens: int = 64) -> np.ndarray:
    """The logits of one fixed prompt (batch 1, empty cache) through the file."""
    from moe_compile.validate.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path)
    prompt = (np.arange(tokens, dtype=np.int64) * 7 % vocab_size)[None]
    feed = {"input_ids": prompt, "attention_mask": np.ones_like(prompt),
            "position_ids": np.arange(tokens, dtype=np.int64)[None]}
    return runner.infer({**feed, **runner.empty_past(1)})["logits"]


def compare_files(ir, files: dict[str, Path], workloads: list, threads: int, rounds: int = 2,
                  repeats: int = 3) -> dict:
    """{name: file} of one model (its base top-k), each measured `rounds` times, alternating.
    -> the largest logit difference of each file from the first one's, a summary per file and
    workload (tokens/s and peak memory of each round), and bench's rows."""
    from moe_compile.validate.backends import BenchModel, TopKSetting, select_backends
    from moe_compile.validate.bench import measure

    names = list(files)
    reference = prompt_logits(files[names[0]], ir.config.vocab_size)
    differences = {name: float(np.abs(prompt_logits(files[name], ir.config.vocab_size) - reference).max())
                   for name in names[1:]}
    base = {spec.index: spec.base_top_k for spec in ir.layers}
    (ort_cpu,) = select_backends(["onnxruntime-cpu"], None)
    model = BenchModel(ir, "fp32", threads, onnx_files=dict(files))
    rows = []
    try:
        for _ in range(rounds):
            for name in names:
                rows += measure(ort_cpu, TopKSetting(name, base), model, workloads, repeats=repeats)
    finally:
        model.close()
    summary = {}
    for row in rows:
        entry = summary.setdefault(f"{row['setting']} b{row['batch']} p{row['prompt']}",
                                   {"prefill": [], "decode": [], "peak_host_mb": []})
        entry["prefill"].append(row["prefill_tokens_per_s"]["median"])
        entry["decode"].append(row["decode_tokens_per_s"]["median"])
        entry["peak_host_mb"].append(row["peak_host_mb"])
    return {"logits_max_abs_difference": differences, "summary": summary, "rows": rows}
