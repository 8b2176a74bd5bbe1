"""Peak memory of one prefill in ONNX Runtime (CPU) for a DeepSeek-V3-shaped model: the
standard-op lowering (what `--target onnxruntime` fell back to for DeepSeek routing before,
and what `--target onnx` still is) against com.microsoft.MoE with the routing in standard ops
(what `--target onnxruntime` gives DeepSeek layers now). Same model, same machine, same run.

Model: deepseek_v3, hidden 1024, 64 routed experts of intermediate 256, top-8 in 8 groups
(best 4), one shared expert, 2 layers, seeded random weights (about 0.45 GB in fp32).
The standard lowering gathers every token's k experts' weights, T·k·3·H·I floats (12.9 GB at
512 tokens), so it is measured only at prompt lengths this shared machine can hold; the
com.microsoft.MoE lowering at every length. Each prefill runs in a fresh process that builds
the session and runs one prompt; peak RSS is that process' ru_maxrss (the session's weights
included), RSS after session creation is reported beside it. Prints JSON; saves it under
benchmarks/results/ort_moe_memory.json.

    python benchmarks/ort_moe_memory.py [--standard-tokens 32,128] [--moe-tokens 32,128,512]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
THREADS = 2
CONFIG = {"vocab_size": 2048, "hidden_size": 1024, "intermediate_size": 2048, "moe_intermediate_size": 256,
          "n_routed_experts": 64, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "n_shared_experts": 1,
          "first_k_dense_replace": 0, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 8,
          "q_lora_rank": 256, "kv_lora_rank": 128, "qk_rope_head_dim": 32, "qk_nope_head_dim": 64, "v_head_dim": 64,
          "routed_scaling_factor": 2.5, "norm_topk_prob": True, "max_position_embeddings": 1024,
          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "tie_word_embeddings": False}

# One prefill in a fresh process: build the session, run a prompt of `tokens`, report memory.
_CHILD = r"""
import json, resource, sys, threading, time
import numpy as np, onnxruntime as ort
path, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
after_session = rss()
feed = {}
for value in session.get_inputs():
    if value.name == "input_ids":
        feed[value.name] = (np.arange(tokens, dtype=np.int64) % 2000 + 7)[None]
    elif value.name == "attention_mask":
        feed[value.name] = np.ones((1, tokens), dtype=np.int64)
    elif value.name == "position_ids":
        feed[value.name] = np.arange(tokens, dtype=np.int64)[None]
    else:  # an empty past: [batch 1, heads, 0, head dim]
        feed[value.name] = np.zeros((1, value.shape[1], 0, value.shape[3]), dtype=np.float32)
peak, done = [after_session], threading.Event()
def sample():  # RSS every millisecond while the prefill runs (ru_maxrss also holds session creation)
    while not done.wait(0.001):
        peak[0] = max(peak[0], rss())
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
session.run(None, feed)
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({"rss_after_session_bytes": after_session, "peak_rss_in_prefill_bytes": max(peak[0], rss()),
                  "prefill_growth_bytes": max(peak[0], rss()) - after_session,
                  "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "prefill_s": seconds}))
"""


def write_model(folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("deepseek_v3", **CONFIG))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            param.copy_(torch.ones_like(param) if name.endswith("norm.weight")
                        else torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
    model.save_pretrained(folder)


def prefill(path: Path, tokens: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tokens), str(THREADS)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx
    from moe_compile.versions import package_versions
    from moe_compile.validate.bench import machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standard-tokens", default="32,128")
    parser.add_argument("--moe-tokens", default="32,128,512")
    args = parser.parse_args()
    lengths = {"onnx": [int(t) for t in args.standard_tokens.split(",")],
               "onnxruntime": [int(t) for t in args.moe_tokens.split(",")]}
    rows, exports = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder)
        ir = load_moe_model(folder)
        for target, token_counts in lengths.items():
            start = time.perf_counter()
            result = export_onnx(ir, Path(tmp) / f"{target}.onnx", target=target)
            exports[target] = {"export_s": round(time.perf_counter() - start, 1),
                               "moe_layers": result.report.layers}
            for tokens in token_counts:
                measured = prefill(result.path, tokens)
                rows.append({"target": target, "lowering": result.report.layers[0]["lowered_to"],
                             "routing": result.report.layers[0]["routing"], "tokens": tokens, **measured})
                print(json.dumps(rows[-1]), file=sys.stderr)
        weight_bytes = sum(spec.parameter_bytes for spec in ir.layers)
    doc = {"benchmark": "ort_moe_memory", "command": " ".join(["python", *sys.argv]),
           "machine": machine_description(THREADS), "platform": platform.platform(),
           "versions": package_versions("onnxruntime", "onnx", "transformers"),
           "threads": THREADS, "config": CONFIG, "moe_parameter_bytes": weight_bytes, "exports": exports,
           "prefill": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ort_moe_memory.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
