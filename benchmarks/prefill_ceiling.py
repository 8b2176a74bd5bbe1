"""How much faster than PyTorch eager any fp32 graph could run onnx_speed.py's 512-token prefill
on this CPU: the ceiling on issue 18's fp32 prefill target (ONNX Runtime >= 1.5x eager).

A prefill of 512 tokens is matrix products. If eager already runs them at the best rate this
machine gives an fp32 matrix product, no graph doing the same arithmetic can be much faster,
whatever its attention or MoE lowering. This measures, in alternating rounds on one machine
(its speed drifts between minutes, so each round is its own comparison):

- eager's prefill (transformers' model, `moe-compile bench`'s own timing: a forward pass over
  one 512-token prompt with an empty cache, all logits) and its arithmetic, counted from the
  config (`prefill_flops`) and checked against torch's FlopCounterMode for the products that
  counter sees (it does not count grouped products or CPU flash attention);
- the machine's fp32 matrix-product rate at 2 threads: torch and ONNX Runtime (MatMul), at the
  products this model runs at 512 tokens and at 2048^3, each the median of calls over half a
  second; the best of those is "peak";
- our default export's prefill in ONNX Runtime, timed the same way;
- ONNX Runtime's own kernels at this prefill: each matrix product our export runs (per-expert
  Gemms at the average rows an expert gets) at the rate ONNX Runtime's MatMul gives that shape,
  and one GroupQueryAttention per layer (what a 512-token prompt runs), timed alone.

ceiling = peak / eager's rate: the most any fp32 graph doing eager's arithmetic could gain.
Attention is counted causal (half the score matrix), which credits eager with the least work it
could be doing and so gives the target the highest ceiling.
kernel floor = the sum of those ONNX Runtime kernels: our graph's time if everything between its
products and attentions (routing, gathers, norms, the executor) cost nothing; eager / floor is the
most our export could gain without faster kernels than ONNX Runtime's. Prints JSON; saves
benchmarks/results/prefill_ceiling.json and .png.

    python benchmarks/prefill_ceiling.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from onnx_speed import CONFIG, THREADS, write_model  # noqa: E402  (the same model, the same seeds)

RESULTS = Path(__file__).parent / "results"
TOKENS, ROUNDS, REPEATS, TARGET = 512, 5, 3, 1.5


def prefill_flops(config: dict, tokens: int) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one Qwen2-MoE forward pass over `tokens` tokens, all
    logits, per part. Routed experts: every token through exactly top-k experts."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = hidden // config["num_attention_heads"]
    kv_width = config["num_key_value_heads"] * head_dim
    per_layer = {
        "attention projections": hidden * (hidden + 2 * kv_width) + hidden * hidden,
        "router and shared-expert gate": hidden * (config["num_experts"] + 1),
        "shared expert": 3 * hidden * config["shared_expert_intermediate_size"],
        "routed experts": config["num_experts_per_tok"] * 3 * hidden * config["moe_intermediate_size"],
    }
    flops = {part: 2 * tokens * layers * macs for part, macs in per_layer.items()}
    # scores and weighted values, over the causal half of the tokens x tokens matrix
    flops["attention (causal)"] = 2 * layers * 2 * config["num_attention_heads"] * head_dim * tokens * (tokens + 1) / 2
    flops["lm_head"] = 2 * tokens * hidden * config["vocab_size"]
    return flops


def counted_by_torch(model, prompt) -> float:
    """FlopCounterMode's total for one forward pass: the products it knows (mm, addmm)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.from_numpy(prompt))
    return float(counter.get_total_flops())


def product_shapes(config: dict, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of the products the model runs at `tokens` tokens (eager's and our export's:
    an expert's M is its average share of the routed rows), and one large square one."""
    hidden, head_dim = config["hidden_size"], config["hidden_size"] // config["num_attention_heads"]
    expert_rows = tokens * config["num_experts_per_tok"] // config["num_experts"]
    shared, routed = config["shared_expert_intermediate_size"], config["moe_intermediate_size"]
    shapes = [(tokens, hidden, hidden), (tokens, hidden, config["num_key_value_heads"] * head_dim),
              (tokens, hidden, shared), (tokens, shared, hidden), (expert_rows, hidden, routed),
              (expert_rows, routed, hidden), (tokens, hidden, config["vocab_size"]), (2048, 2048, 2048)]
    return shapes + [shape for shape in export_products(config, tokens) if shape not in shapes]


def export_products(config: dict, tokens: int) -> dict[tuple[int, int, int], int]:
    """{(M, K, N): how many} of the matrix products our default export runs at a prefill of
    `tokens` tokens: the projections, the shared expert (gate, up, down), each routed expert's fc1
    (gate and up rows in one Gemm) and fc2 at the average rows an expert gets, the lm_head. (The
    router's and shared-expert gate's products, 0.2 % of the arithmetic, are left out.)"""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv_width = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    experts, routed, shared = config["num_experts"], config["moe_intermediate_size"], config["shared_expert_intermediate_size"]
    expert_rows = tokens * config["num_experts_per_tok"] // experts
    counts: dict[tuple[int, int, int], int] = {}
    for shape, per_layer in (((tokens, hidden, hidden), 2), ((tokens, hidden, kv_width), 2),
                             ((tokens, hidden, shared), 2), ((tokens, shared, hidden), 1),
                             ((expert_rows, hidden, 2 * routed), experts), ((expert_rows, routed, hidden), experts)):
        counts[shape] = counts.get(shape, 0) + per_layer * layers
    counts[(tokens, hidden, config["vocab_size"])] = 1
    return counts


def _seconds(run, seconds: float = 0.5) -> float:
    """The median time of repeated calls of `run` over about `seconds` (sustained, as the
    prefills are timed; the fastest single call of a shared VM would overstate the machine)."""
    run()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        run()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _rate(run, flops: float) -> float:
    """GFLOP/s of `run` (`_seconds`)."""
    return flops / _seconds(run) / 1e9


def _ort_session(graph):
    import onnxruntime as ort
    from onnx import helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def prompt_attention_ms(config: dict, tokens: int) -> float:
    """One com.microsoft.GroupQueryAttention over a whole causal prompt of `tokens` tokens with the
    model's heads (as export/lowering/prompt_attention.py writes it), ms at THREADS threads."""
    from onnx import TensorProto, helper

    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim = config["hidden_size"] // heads
    names = {"query": heads * dim, "key": kv_heads * dim, "value": kv_heads * dim}
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, tokens, width]) for name, width in names.items()]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
               helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention", [*names, "", "", "seqlens_k", "total"], ["out", "key_out", "value_out"],
                            domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=dim ** -0.5)
    session = _ort_session(helper.make_graph([node], "attention", inputs,
                                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]))
    generator = np.random.default_rng(0)
    feed = {name: generator.standard_normal((1, tokens, width), dtype=np.float32) for name, width in names.items()}
    feed |= {"seqlens_k": np.array([tokens - 1], np.int32), "total": np.array(tokens, np.int32)}
    return _seconds(lambda: session.run(["out"], feed)) * 1e3


def kernel_floor_ms(config: dict, tokens: int, rates: dict[str, float], attention_ms: float) -> float:
    """ONNX Runtime's kernels alone at this prefill: every product of `export_products` at the rate
    `matmul_rates` measured for its shape, plus one prompt attention per layer."""
    products = sum(count * 2 * m * k * n / (rates[f"onnxruntime {m}x{k}x{n}"] * 1e9)
                   for (m, k, n), count in export_products(config, tokens).items())
    return products * 1e3 + config["num_hidden_layers"] * attention_ms


def matmul_rates(shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """{'torch MxKxN' / 'onnxruntime MxKxN': GFLOP/s} at THREADS threads."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rates = {}
    generator = np.random.default_rng(0)
    for m, k, n in shapes:
        x = generator.standard_normal((m, k), dtype=np.float32)
        w = generator.standard_normal((k, n), dtype=np.float32)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        rates[f"torch {m}x{k}x{n}"] = _rate(lambda: torch.mm(tx, tw), 2 * m * k * n)
        session = _ort_session(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                                                 [numpy_helper.from_array(w, "w")]))
        rates[f"onnxruntime {m}x{k}x{n}"] = _rate(lambda: session.run(None, {"x": x}), 2 * m * k * n)
    return {name: round(rate, 1) for name, rate in rates.items()}


def plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.8))
    index = np.arange(len(rounds))
    series = [("best fp32 matrix product (peak)", "peak_gflops", "tab:gray"),
              ("PyTorch eager prefill", "eager_gflops", "tab:blue"),
              ("ONNX Runtime prefill (default export)", "onnxruntime_gflops", "tab:orange"),
              ("ONNX Runtime's kernels alone (floor)", "kernel_floor_gflops", "tab:green")]
    for offset, (label, key, color) in enumerate(series):
        axis.bar(index + (offset - 1.5) * 0.2, [r[key] for r in rounds], 0.2, label=label, color=color)
    axis.plot(index, [TARGET * r["eager_gflops"] for r in rounds], "r_", markersize=30, mew=2,
              label=f"{TARGET}x eager (issue 18's target)")
    axis.set_xticks(index, [f"round {i + 1}" for i in index])
    axis.set_ylabel(f"GFLOP/s, fp32, {THREADS} threads")
    axis.set_title(f"Prefill of {TOKENS} tokens against this CPU's matrix-product peak")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)  # below the bars
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    import torch

    from moe_compile.commands.bench import export_for_onnxruntime
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.validate.backends import BenchModel, TopKSetting, select_backends
    from moe_compile.validate.bench import machine_description
    from moe_compile.validate.timing import time_prefill

    load_before, start = os.getloadavg(), time.perf_counter()
    torch.set_num_threads(THREADS)
    flops = prefill_flops(CONFIG, TOKENS)
    total = sum(flops.values())
    shapes = product_shapes(CONFIG, TOKENS)
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp) / "model")
        ir = load_moe_model(Path(tmp) / "model")
        setting = TopKSetting("base", {spec.index: spec.base_top_k for spec in ir.layers})
        model = BenchModel(ir, "fp32", THREADS, export=export_for_onnxruntime)
        try:
            eager, onnxruntime = select_backends(["transformers", "onnxruntime-cpu"], None)
            model.onnx_for(setting)
            runners = {"eager": eager.build(model, setting), "onnxruntime": onnxruntime.build(model, setting)}
            prompt = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (1, TOKENS))
            torch_counted = counted_by_torch(runners["eager"].wrapper.model, prompt)
            rounds = []
            for _ in range(ROUNDS):
                entry = {"matmul_gflops": matmul_rates(shapes)}
                for name, runner in runners.items():
                    seconds = time_prefill(runner, prompt, model.empty_past(1), repeats=REPEATS).seconds.median
                    entry[f"{name}_ms"] = round(seconds * 1e3, 1)
                    entry[f"{name}_gflops"] = round(total / seconds / 1e9, 1)
                entry["onnxruntime_attention_ms"] = round(prompt_attention_ms(CONFIG, TOKENS), 2)
                floor = kernel_floor_ms(CONFIG, TOKENS, entry["matmul_gflops"], entry["onnxruntime_attention_ms"])
                entry["kernel_floor_ms"] = round(floor, 1)
                entry["kernel_floor_gflops"] = round(total / floor * 1e3 / 1e9, 1)
                entry["peak_gflops"] = max(entry["matmul_gflops"].values())
                entry["eager_share_of_peak"] = round(entry["eager_gflops"] / entry["peak_gflops"], 3)
                entry["ceiling_vs_eager"] = round(entry["peak_gflops"] / entry["eager_gflops"], 3)
                entry["onnxruntime_vs_eager"] = round(entry["eager_ms"] / entry["onnxruntime_ms"], 3)
                entry["floor_vs_eager"] = round(entry["eager_ms"] / floor, 3)
                entry["onnxruntime_share_of_floor"] = round(floor / entry["onnxruntime_ms"], 3)
                rounds.append(entry)
                print(json.dumps({k: v for k, v in entry.items() if k != "matmul_gflops"}), file=sys.stderr)
        finally:
            model.close()
    counted_parts = total - flops["routed experts"] - flops["attention (causal)"]
    result = {
        "benchmark": "prefill_ceiling", "command": "python benchmarks/prefill_ceiling.py",
        "device": f"CPU, {THREADS} threads (torch and ONNX Runtime)", "machine": machine_description(THREADS),
        "model": {"model_type": "qwen2_moe", **CONFIG}, "tokens": TOKENS, "target_vs_eager": TARGET,
        "gflop": {part: round(value / 1e9, 3) for part, value in flops.items()} | {"total": round(total / 1e9, 3)},
        "export_products": {f"{m}x{k}x{n}": count for (m, k, n), count in export_products(CONFIG, TOKENS).items()},
        "flop_check": {"torch_flop_counter_gflop": round(torch_counted / 1e9, 3),
                       "ours_for_the_same_products_gflop": round(counted_parts / 1e9, 3)},
        "median": {key: statistics.median(r[key] for r in rounds)
                   for key in ("eager_share_of_peak", "ceiling_vs_eager", "onnxruntime_vs_eager", "floor_vs_eager",
                               "onnxruntime_share_of_floor")},
        "rounds": rounds,
        "load_average_before_after": [load_before, os.getloadavg()],
        "seconds": round(time.perf_counter() - start),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prefill_ceiling.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rounds, RESULTS / "prefill_ceiling.png")
    print(json.dumps({key: result[key] for key in ("gflop", "flop_check", "median")}, indent=1))


if __name__ == "__main__":
    main()
