"""Two or more ONNX exports of one model, timed against each other in one run: `moe-compile
bench`'s own measurement (validate/bench.measure on ONNX Runtime's CPU provider), each file in
turn, for several rounds, so that the drift of a shared VM falls on all files alike. Used by
moe_prefill_lowering.py (com.microsoft.MoE against sorted experts), attention_fusion.py
(attention and norms as exported against ONNX Runtime's fused ops) and grouped_attention_ab.py
(the export's grouped attention against the SDPA form)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def prompt_logits(path: Path, vocab_size: int, tokens: int = 64) -> np.ndarray:
    """The logits of one fixed prompt (batch 1, empty cache) through the file."""
    from moe_compile.validate.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path)
    prompt = (np.arange(tokens, dtype=np.int64) * 7 % vocab_size)[None]
    feed = {"input_ids": prompt, "attention_mask": np.ones_like(prompt),
            "position_ids": np.arange(tokens, dtype=np.int64)[None]}
    return runner.infer({**feed, **runner.empty_past(1)})["logits"]


def compare_files(ir, files: dict[str, Path], workloads: list, threads: int, rounds: int = 2,
                  repeats: int = 3, logit_tokens: int = 64) -> dict:
    """{name: file} of one model (its base top-k), each measured `rounds` times, alternating (the
    order reversed every other round: on this VM the file measured first decoded up to 20 % faster).
    -> the largest logit difference of each file from the first one's (a prompt of `logit_tokens`),
    a summary per file and workload (tokens/s and peak memory of each round), and bench's rows."""
    from moe_compile.validate.backends import BenchModel, TopKSetting, select_backends
    from moe_compile.validate.bench import in_rounds, measure

    names = list(files)
    reference = prompt_logits(files[names[0]], ir.config.vocab_size, logit_tokens)
    differences = {name: float(np.abs(prompt_logits(files[name], ir.config.vocab_size, logit_tokens) - reference).max())
                   for name in names[1:]}
    base = {spec.index: spec.base_top_k for spec in ir.layers}
    (ort_cpu,) = select_backends(["onnxruntime-cpu"], None)
    model = BenchModel(ir, "fp32", threads, onnx_files=dict(files))
    rows = []
    try:
        # the order reversed every other round: a file measured first gains
        for number, name in in_rounds(names, rounds):
            rows += measure(ort_cpu, TopKSetting(name, base), model, workloads, repeats=repeats, round_number=number)
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


def decode_step_times(files: dict[str, Path], past_lengths: tuple[int, ...], threads: int, rounds: int = 12,
                      steps: int = 30) -> dict:
    """One decode step (batch 1, a random cache of each length in `past_lengths`) timed in a fresh
    session of each file, `rounds` times, the order reversed every other round. Fresh sessions
    because two sessions of the same file differ by up to 10 % here (where the weights and buffers
    land): bench's two rounds cannot tell a few per cent apart. -> {length: {name: {"ms_per_round",
    "median_ms"}}}."""
    import onnxruntime as ort

    from moe_compile.validate.bench import in_rounds

    names = list(files)
    generator = np.random.default_rng(0)
    result = {}
    for length in past_lengths:
        feed = None
        times = {name: [] for name in names}
        for _, name in in_rounds(names, rounds):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.log_severity_level = threads, 3
            session = ort.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
            if feed is None:
                feed = {"input_ids": np.full((1, 1), 5, np.int64), "attention_mask": np.ones((1, length + 1), np.int64),
                        "position_ids": np.full((1, 1), length, np.int64)}
                feed |= {i.name: generator.standard_normal((1, i.shape[1], length, i.shape[3])).astype(np.float32)
                         for i in session.get_inputs() if i.name.startswith("past_key_values.")}
            for _ in range(5):
                session.run(None, feed)
            begin = time.perf_counter()
            for _ in range(steps):
                session.run(None, feed)
            times[name].append(round((time.perf_counter() - begin) / steps * 1e3, 4))
            del session
        result[str(length)] = {name: {"ms_per_round": t, "median_ms": round(float(np.median(t)), 4)}
                               for name, t in times.items()}
    return result


def run_file_ab(benchmark: str, export_files, workloads: list, decode_steps: tuple[int, ...] = (), rounds: int = 2,
                logit_tokens: int = 64, extra=None) -> dict:
    """onnx_speed.py's model (its seeds), exported by `export_files(ir, folder)` -> ({name: file},
    what to record of the exports), then `compare_files` at onnx_speed.py's threads, `rounds` times (and
    `decode_step_times` after caches of `decode_steps` positions; `extra(files)`, a dict recorded
    as it is); the result, with the machine, versions, load and time, saved as
    results/`benchmark`.json and its summary printed."""
    import onnxruntime as ort
    import torch

    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.validate.bench import machine_description
    from onnx_speed import THREADS, write_model

    load_before, start = os.getloadavg(), time.perf_counter()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(tmp / "model")
        ir = load_moe_model(tmp / "model")
        files, exports = export_files(ir, tmp)
        model = compare_files(ir, files, workloads, THREADS, rounds=rounds, logit_tokens=logit_tokens)
        steps = decode_step_times(files, decode_steps, THREADS) if decode_steps else None
        exports |= extra(files) if extra else {}
    result = {"benchmark": benchmark, "command": f"python benchmarks/{benchmark}.py",
              "machine": machine_description(THREADS), "onnxruntime": ort.__version__, **exports,
              "load_average_before_after": [load_before, os.getloadavg()],
              "seconds": round(time.perf_counter() - start), "whole_model": model,
              **({"decode_step_fresh_sessions": steps} if steps else {})}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{benchmark}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key not in ("whole_model", "decode_step_fresh_sessions")}
                     | {"summary": model["summary"], "logits": model["logits_max_abs_difference"]}
                     | ({"decode_step_median_ms": {length: {name: entry["median_ms"] for name, entry in by_file.items()}
                                                   for length, by_file in steps.items()}} if steps else {}), indent=1))
    return result
