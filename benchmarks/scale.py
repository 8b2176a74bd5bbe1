"""profile, plan, export and validate of a real-shaped random checkpoint: wall time and peak memory.

Writes a checkpoint with the layer shapes of Qwen3-30B-A3B (hidden 2048, 128 experts of 768,
top-8; `--shape qwen3-30b-a3b`, the default) or Qwen1.5-MoE-A2.7B (hidden 2048, 60 experts of
1408, top-4, a shared expert of 5632, attention with biases; `--shape qwen1.5-moe-a2.7b`), the
real vocabulary and attention, random bf16 weights, one shard per decoder layer, one shard in
memory at a time; then runs each command as a subprocess with --json and records its wall
time and the peak memory the command itself reports (VmHWM, sampled RssAnon peak, and for
export the helper process that writes the MoE weights: moe_compile/process_memory.py). The disk
is measured in the same run: one timed read of every shard and two timed writes (+ fsync) of as
many bytes as the export wrote, one through the page cache and one past it (O_DIRECT, as the
export writes): `io_bound_s` and `io_bound_direct_s`, the floors export time is compared with.
The commands share a digest cache of the run's own (compiler/digest_cache.py, under --work), so
plan, export and validate find the weights' hash that profile computed, as they do for a user;
`export_without_digest_cache` is the same export again with the cache off (the first command on
a checkpoint).

    python benchmarks/scale.py --layers 4 --work /tmp/scale --out benchmarks/results/scale.json
    python benchmarks/scale.py --layers 2 --dtype fp16 --work /tmp/scale --out ...  # an fp16 export
    python benchmarks/scale.py --shape qwen1.5-moe-a2.7b --layers 2 --work /tmp/scale --out ...
    python benchmarks/scale.py --layers 4 --quantize int4 --work /tmp/scale --out ...  # export --quantize int4

Prints the JSON it writes. The checkpoint needs about 1.25 GB per layer (Qwen1.5-MoE: 1.15) +
1.25 GB, the fp32 export twice that: check `df -h` first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_shapes import QWEN3_30B_A3B, QWEN15_MOE_A27B, layer_shapes  # noqa: E402

SHAPES = {"qwen3-30b-a3b": QWEN3_30B_A3B,
          "qwen1.5-moe-a2.7b": {**QWEN15_MOE_A27B, "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936,
                                "rope_theta": 1000000.0, "hidden_act": "silu", "bos_token_id": 151643,
                                "eos_token_id": 151643}}


def write_checkpoint(folder: Path, config: dict) -> int:
    """One safetensors shard per decoder layer (+ one for embeddings and head), written one at a
    time; -> bytes written."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    shards = [{"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
               "lm_head.weight": (vocab, hidden)}]
    shards += [layer_shapes(config, layer) for layer in range(config["num_hidden_layers"])]
    generator = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    for number, shapes in enumerate(shards, 1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: (torch.ones(shape) if key.endswith("norm.weight") else
                         torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
                   for key, shape in shapes.items()}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


def run_command(argv: list[str], **environment: str) -> dict:
    """`python -m moe_compile ARGV --json` (with `environment` added) -> wall seconds and the
    command's own peak_memory."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **environment)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "moe_compile", *argv, "--json"], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"moe-compile {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report = json.loads(done.stdout)
    return {"argv": argv, "wall_s": round(wall, 1), "peak_memory": report.get("peak_memory"),
            **(_parity(report) if "passed" in report else {})}


def _parity(validate_report: dict) -> dict:
    """What validate's --json says of parity: the verdict, the dtype's tolerance, the largest
    logit difference at prefill and decode, and whether 32 greedy tokens came out the same."""
    return {"passed": validate_report["passed"], "tolerance": validate_report["tolerance"],
            "logits_max_abs": {phase: max(o["max_abs"] for o in validate_report[phase] if o["name"] == "logits")
                               for phase in ("prefill", "decode")},
            "generation_identical": validate_report["generation_identical"]}


def disk_throughput(files: list[Path], write_bytes: int, scratch: Path) -> dict:
    """One timed sequential read of `files`, one timed write + fsync of `write_bytes` through the
    page cache, and one past it (O_DIRECT, as the streamed export writes: moe_compile/direct_file.py)."""
    from moe_compile.direct_file import DirectFile

    block = 16 << 20
    start, read = time.perf_counter(), 0
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while chunk := handle.read(block):
                read += len(chunk)
    read_s = time.perf_counter() - start
    zeros = bytes(block)
    start = time.perf_counter()
    with open(scratch, "wb", buffering=0) as handle:
        for offset in range(0, write_bytes, block):
            handle.write(zeros[: min(block, write_bytes - offset)])
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - start
    scratch.unlink()
    start = time.perf_counter()
    with DirectFile(scratch) as handle:
        for offset in range(0, write_bytes, block):
            handle.write(zeros[: min(block, write_bytes - offset)])
        direct = handle.direct
    with open(scratch, "rb+") as handle:
        os.fsync(handle.fileno())
    direct_s = time.perf_counter() - start
    scratch.unlink()
    return {"read_bytes": read, "read_s": round(read_s, 1), "read_MBps": round(read / read_s / 1e6),
            "write_bytes": write_bytes, "write_s": round(write_s, 1), "write_MBps": round(write_bytes / write_s / 1e6),
            "direct_write_s": round(direct_s, 1), "direct_write_MBps": round(write_bytes / direct_s / 1e6),
            "direct_write_used_o_direct": direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/moe-compile-scale"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="the export's dtype (bf16 is not run: ONNX Runtime's CPU provider has no bf16 kernels)")
    parser.add_argument("--quantize", choices=("int4", "int8"), help="export --quantize (fp32 activations)")
    args = parser.parse_args()
    if args.quantize and args.dtype != "fp32":
        parser.error("--quantize exports at --dtype fp32")
    config = dict(SHAPES[args.shape], num_hidden_layers=args.layers)
    shutil.rmtree(args.work / "digest-cache", ignore_errors=True)
    os.environ["MOE_COMPILE_CACHE_DIR"] = str(args.work / "digest-cache")  # every command below inherits it
    model = args.work / "model"
    start = time.perf_counter()
    checkpoint_bytes = write_checkpoint(model, config)
    from moe_compile.validate.bench import cpu_model

    result = {"machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                          "load_at_start": os.getloadavg()},
              "model": {"shape": f"{args.shape} layers", "layers": args.layers, "checkpoint_bytes": checkpoint_bytes,
                        "export_dtype": args.dtype, **({"quantize": args.quantize} if args.quantize else {}),
                        "write_checkpoint_s": round(time.perf_counter() - start, 1)}}
    profile, plan, onnx = args.work / "profile.json", args.work / "plan.json", args.work / "onnx" / "model.onnx"
    onnx.parent.mkdir(exist_ok=True)
    result["profile"] = run_command(["profile", str(model), "--batch", "1", "--seq-len", "8", "--draws", "1",
                                     "--out", str(profile)])
    result["plan"] = run_command(["plan", str(model), "--profile", str(profile), "--budget", "0.75",
                                  "--out", str(plan)])
    result["export"] = run_command(["export", str(model), "--plan", str(plan), "--target", "onnxruntime",
                                    "--dtype", args.dtype, *(["--quantize", args.quantize] if args.quantize else []),
                                    "--out", str(onnx)])
    result["validate"] = run_command(["validate", str(model), "--plan", str(plan), "--onnx", str(onnx)])
    # The export above found the weights' digests that profile remembered (compiler/digest_cache.py);
    # the same export once more without them, as the first command on a checkpoint runs.
    cold = args.work / "onnx-cold" / "model.onnx"
    cold.parent.mkdir(exist_ok=True)
    result["export_without_digest_cache"] = run_command(
        [*result["export"]["argv"][:-1], str(cold)], MOE_COMPILE_CACHE="off")
    shutil.rmtree(cold.parent)
    onnx_bytes = sum(p.stat().st_size for p in onnx.parent.iterdir())
    disk = disk_throughput(sorted(model.glob("*.safetensors")), onnx_bytes, args.work / "scratch.bin")
    result["disk"] = disk
    result["export"]["onnx_bytes"] = onnx_bytes
    result["export"]["io_bound_s"] = round(disk["read_s"] + disk["write_s"], 1)
    result["export"]["io_bound_direct_s"] = round(disk["read_s"] + disk["direct_write_s"], 1)
    result["machine"]["load_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
