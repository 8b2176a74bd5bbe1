"""com.microsoft.MoE against a sort-by-expert grouped matmul in standard ONNX ops, in ONNX
Runtime (CPU), from decode (1 token) to long prompts (2048), to decide which `--target
onnxruntime` should use at which token count.

The sorted lowering is moe_compile/export/lowering/sorted_experts.py: a com.microsoft.MoE node
becomes If(tokens >= n, sorted experts, the node), the experts' weights read as per-expert views
of the node's own tensors. Two parts, in one run on one machine:

1. One MoE layer (hidden states and router logits in, the layer's output out), at 1 and 2
   threads: the node alone against the sorted experts at every token count (n = 1), medians of
   7 runs after 2 warm-ups, for onnx_speed.py's layer (hidden 512, 16 experts of 256, top-4) and
   a fine-grained one (hidden 1024, 64 experts of 256, top-8). Outputs checked against the node's
   and against numpy.
2. The whole of onnx_speed.py's model exported fp32 for onnxruntime both ways (`export
   --moe-prompts node`, and the default: sorted from MIN_SORTED_TOKENS), timed by `moe-compile
   bench`'s own code at 2 threads (batch 1 with 128, 512 and 2048-token prompts, batch 8 x 128,
   decode at batch 1 and 8), twice each, alternating, with each session's peak memory; the
   logits of one prompt compared.

Prints JSON; saves it under benchmarks/results/moe_prefill_lowering.json.

    python benchmarks/moe_prefill_lowering.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import compare_files  # noqa: E402
from onnx_speed import THREADS, write_model  # noqa: E402  (the same model, the same seeds)
from moe_compile.export.lowering.sorted_experts import MIN_SORTED_TOKENS, NODE, SORTED, sort_multi_token_experts  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LAYER_TOKENS = (1, 2, 4, 8, 32, 128, 512, 2048)
LAYER_THREADS = (1, 2)


@dataclass(frozen=True)
class LayerShape:
    name: str
    hidden: int
    experts: int
    intermediate: int
    top_k: int


SHAPES = (LayerShape("onnx_speed (Qwen2-MoE style)", 512, 16, 256, 4),
          LayerShape("fine-grained (DeepSeek style)", 1024, 64, 256, 8))


def expert_weights(shape: LayerShape, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gate, up [E, I, H] and down [E, H, I], as a checkpoint stores them (out, in)."""
    rng = np.random.default_rng(seed)
    E, H, I = shape.experts, shape.hidden, shape.intermediate
    gate = (rng.standard_normal((E, I, H)) * H ** -0.5).astype(np.float32)
    up = (rng.standard_normal((E, I, H)) * H ** -0.5).astype(np.float32)
    down = (rng.standard_normal((E, H, I)) * I ** -0.5).astype(np.float32)
    return gate, up, down


def _io(shape: LayerShape) -> tuple[list, list]:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", shape.hidden]),
              helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", shape.experts])]
    return inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", shape.hidden])]


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def ort_moe_graph(shape: LayerShape, weights) -> onnx.ModelProto:
    gate, up, down = weights
    E, I, H = gate.shape
    fc1 = np.stack([gate, up], axis=2).reshape(E, 2 * I, H)  # rows gate0, up0, gate1, up1, ...
    node = helper.make_node("MoE", ["x", "logits", "fc1", "", "fc2"], ["y"], domain="com.microsoft",
                            k=shape.top_k, activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=0,
                            activation_alpha=1.0, activation_beta=0.0)
    inputs, outputs = _io(shape)
    return _model(helper.make_graph([node], "ort_moe", inputs, outputs,
                                    [numpy_helper.from_array(fc1, "fc1"), numpy_helper.from_array(down, "fc2")]))


def reference(shape: LayerShape, weights, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    gate, up, down = weights
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[:, :shape.top_k]
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for e in top[t]:
            g, u = gate[e] @ x[t], up[e] @ x[t]
            y[t] += probs[t, e] * (down[e] @ (g / (1 + np.exp(-g)) * u))
    return y


def timed(session, feed: dict, runs: int = 7) -> float:
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sorted_always(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if sort_multi_token_experts(copy, min_tokens=1) == 0:
        raise RuntimeError("no com.microsoft.MoE node was switched")
    return copy


def one_layer() -> list[dict]:
    import onnxruntime as ort

    rows = []
    for shape in SHAPES:
        weights = expert_weights(shape)
        node = ort_moe_graph(shape, weights)
        graphs = {"com.microsoft.MoE": node, "sorted experts": sorted_always(node)}
        for threads in LAYER_THREADS:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sessions = {name: ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
                        for name, graph in graphs.items()}
            rng = np.random.default_rng(1)
            for tokens in LAYER_TOKENS:
                feed = {"x": rng.standard_normal((tokens, shape.hidden)).astype(np.float32),
                        "logits": rng.standard_normal((tokens, shape.experts)).astype(np.float32)}
                outputs = {name: session.run(None, feed)[0] for name, session in sessions.items()}
                row = {"shape": shape.name, "threads": threads, "tokens": tokens,
                       "max_abs_difference": float(np.abs(outputs["com.microsoft.MoE"] - outputs["sorted experts"]).max())}
                if tokens <= 8:
                    row["max_abs_error_vs_numpy"] = float(np.abs(outputs["sorted experts"] - reference(shape, weights, feed["x"], feed["logits"])).max())
                for name, session in sessions.items():
                    row[f"{name} ms"] = round(timed(session, feed) * 1e3, 3)
                row["speedup"] = round(row["com.microsoft.MoE ms"] / row["sorted experts ms"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def whole_model(tmp: Path) -> dict:
    import torch

    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx
    from moe_compile.validate.bench import Workload

    torch.set_num_threads(THREADS)
    write_model(tmp / "model")
    ir = load_moe_model(tmp / "model")
    files = {"node": tmp / "node.onnx", f"sorted from {MIN_SORTED_TOKENS} tokens": tmp / "sorted.onnx"}
    for mode, path in zip((NODE, SORTED), files.values()):
        export_onnx(ir, path, target="onnxruntime", moe_prompts=mode)
    workloads = [Workload(1, 128, 32), Workload(8, 128, 16), Workload(1, 512, 4), Workload(1, 2048, 4)]
    return compare_files(ir, files, workloads, THREADS)


def main() -> None:
    import onnxruntime as ort

    from moe_compile.validate.bench import machine_description

    load_before = os.getloadavg()
    layer = one_layer()
    with tempfile.TemporaryDirectory() as tmp:
        model = whole_model(Path(tmp))
    result = {"benchmark": "moe_prefill_lowering", "command": "python benchmarks/moe_prefill_lowering.py",
              "machine": machine_description(THREADS), "onnxruntime": ort.__version__,
              "load_average_before_after": [load_before, os.getloadavg()],
              "one_layer": layer, "whole_model": model}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "moe_prefill_lowering.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"whole_model": {k: v for k, v in model.items() if k != "rows"}}, indent=1))


if __name__ == "__main__":
    main()
