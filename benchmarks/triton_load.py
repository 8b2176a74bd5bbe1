"""Throughput and latency of the built-in demo on a real Triton Inference Server (the tritonserver
bundled in nvidia-pytriton, python backend running the onnxruntime-target ONNX, CPU, loopback).

The load the deploy tests apply, measured: 8 concurrent clients x 50 requests each, per protocol.
One request is a decode step of the stateless decoder (1 new token after a 16-token past,
batch 1, the client carrying the KV cache). Then 8 clients x 4 calls of demo_generate (32 greedy
tokens from a 16-token prompt, decoded inside the server). Latency is per request, measured by
the client; every answer is checked against the first (identical) and errors are counted.
Prints JSON; saves it and a PNG of the same numbers under benchmarks/results/.

    python benchmarks/triton_load.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from moe_compile.compiler.loader import load_moe_model
from moe_compile.deploy.client import TritonRunner, generate
from moe_compile.deploy.repository import deploy
from moe_compile.deploy.server import TritonServer
from moe_compile.export.exporter import export_onnx
from moe_compile.validate.bench import cpu_model
from moe_compile.validate.generation import decoder_feed
from moe_compile.validate.runners import OnnxRuntimeRunner

CLIENTS, REQUESTS, GENERATE_CALLS, PAST, NEW_TOKENS = 8, 50, 4, 16, 32
RESULTS = Path(__file__).parent / "results"


def decode_feed(onnx_path: Path) -> dict:
    """One decode step after a real 16-token prefill (ONNX Runtime here makes the past)."""
    local = OnnxRuntimeRunner(onnx_path)
    past_inputs = [i for i in local.session.get_inputs() if i.name.startswith("past_key_values.")]
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in past_inputs}
    prompt = np.random.default_rng(0).integers(0, 512, (1, PAST))
    out = local.infer(decoder_feed(prompt, empty, 0))
    past = {i.name: out[i.name.replace("past_key_values.", "present.")] for i in past_inputs}
    return decoder_feed(out["logits"][:, -1].argmax(-1)[:, None], past, PAST)


def load(url: str, protocol: str, model: str, call, calls: int) -> dict:
    """CLIENTS threads, each with its own client, `calls` requests each."""
    def client(_):
        latencies, answers, errors = [], [], 0
        with TritonRunner(url, model, protocol) as runner:
            for _ in range(calls):
                start = time.perf_counter()
                try:
                    answers.append(call(runner))
                except Exception:  # noqa: BLE001 - any failed request counts as an error
                    errors += 1
                latencies.append(time.perf_counter() - start)
        return latencies, answers, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - start
    latencies = np.array([t for r in results for t in r[0]]) * 1e3
    answers = [a for r in results for a in r[1]]
    return {"protocol": protocol, "model": model, "clients": CLIENTS, "requests": len(latencies),
            "errors": sum(r[2] for r in results),
            "identical_answers": all(np.array_equal(a, answers[0]) for a in answers),
            "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2), "wall_s": round(wall, 2)}


def plot(report: dict, path: Path) -> None:
    """Requests/s and p50/p99 latency per protocol and model, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    labels = ["\n".join([*r["model"].split("_"), r["protocol"]]) for r in runs]
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(10, 4))
    rate.bar(labels, [r["requests_per_s"] for r in runs], color="tab:blue")
    rate.set_ylabel("requests / s")
    positions = np.arange(len(runs))
    latency.bar(positions - 0.2, [r["p50_ms"] for r in runs], 0.4, label="p50")
    latency.bar(positions + 0.2, [r["p99_ms"] for r in runs], 0.4, label="p99")
    latency.set_xticks(positions, labels)
    latency.set_ylabel("latency (ms)")
    latency.set_yscale("log")
    latency.legend()
    figure.suptitle(f"demo on tritonserver (python backend, CPU): {CLIENTS} concurrent clients")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "demo.onnx"
        export_onnx(load_moe_model("demo"), onnx_path, target="onnxruntime")
        deploy(onnx_path, Path(tmp) / "repo", "demo", backend="python")
        feed = decode_feed(onnx_path)
        prompt = np.random.default_rng(1).integers(0, 512, (1, PAST))
        runs = []
        with TritonServer(Path(tmp) / "repo") as server:
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                runs.append(load(url, protocol, "demo", lambda r: r.infer(feed)["logits"], REQUESTS))
            for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                run = load(url, protocol, "demo_generate", lambda r: generate(r, prompt, NEW_TOKENS)[0], GENERATE_CALLS)
                run["tokens_per_s"] = round(run["requests_per_s"] * NEW_TOKENS, 1)
                runs.append(run)
    from importlib.metadata import version

    report = {"benchmark": "triton_load",
              "device": f"CPU: {cpu_model()}, {os.cpu_count()} cores, loopback",
              "load_average_1min_after": round(os.getloadavg()[0], 2),  # the machine is shared: context for the numbers
              "server": "tritonserver 2.51 (nvidia-pytriton), python backend, 1 instance per model, "
                        "ONNX Runtime default threads",
              "versions": {name: version(name) for name in ("onnxruntime", "tritonclient", "nvidia-pytriton")},
              "decode_request": f"batch 1, 1 token after a {PAST}-token past (client-side KV cache)",
              "generate_request": f"batch 1, {NEW_TOKENS} greedy tokens after a {PAST}-token prompt (server-side loop)",
              "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triton_load.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "triton_load.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
