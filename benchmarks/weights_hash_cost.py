"""What the weights' content hash (compiler/weights_hash.py) costs, against reading the same
bytes without hashing, in one run on one machine.

A checkpoint of --gib GiB of fp16 tensors (4 shards, seeded random values, 64 MiB tensors) is
written to a temporary folder; then, each --repeats times, best of: a plain sequential read of
every shard in 16 MiB chunks (the floor: one read of the checkpoint) and `weights_sha256` over
the same files, with its digest cache off (compiler/digest_cache.py). Both read from the page
cache once the files are written (the files are smaller than memory), so the hash's extra cost
over the read is its CPU time. Prints JSON; saves it under benchmarks/results/weights_hash_cost.json.

    python benchmarks/weights_hash_cost.py [--gib 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from moe_compile.validate.bench import cpu_model

RESULTS = Path(__file__).parent / "results"
TENSOR_ELEMENTS = 32 << 20  # 64 MiB of fp16
SHARDS = 4


def write_checkpoint(folder: Path, gib: float) -> list[Path]:
    generator = torch.Generator().manual_seed(0)
    tensors = int(gib * (1 << 30) // (TENSOR_ELEMENTS * 2))
    files = []
    for shard in range(SHARDS):
        names = range(shard, tensors, SHARDS)
        path = folder / f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file({f"model.layers.{n}.weight": torch.randn(TENSOR_ELEMENTS, generator=generator).half() for n in names},
                  path)
        files.append(path)
    return files


def plain_read(files: list[Path]) -> None:
    buffer = bytearray(16 << 20)
    for file in files:
        with open(file, "rb") as handle:
            while handle.readinto(buffer):
                pass


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from moe_compile.compiler.weights_hash import weights_sha256
    from moe_compile.versions import package_versions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["MOE_COMPILE_CACHE"] = "off"  # every repeat hashes: remembered digests would skip the work measured
    with tempfile.TemporaryDirectory() as tmp:
        files = write_checkpoint(Path(tmp), args.gib)
        size = sum(file.stat().st_size for file in files)
        read_s = best_of(args.repeats, lambda: plain_read(files))
        hash_s = best_of(args.repeats, lambda: weights_sha256(files, show_progress=False))
    doc = {"benchmark": "weights_hash_cost", "command": " ".join(["python", *sys.argv]),
           "cpu": cpu_model(), "platform": platform.platform(),
           "python": platform.python_version(), "versions": package_versions("safetensors"),
           "checkpoint_bytes": size, "shards": SHARDS, "repeats": args.repeats,
           "plain_read_s": round(read_s, 3), "plain_read_gb_s": round(size / read_s / 1e9, 2),
           "weights_sha256_s": round(hash_s, 3), "weights_sha256_gb_s": round(size / hash_s / 1e9, 2),
           "hash_over_read": round(hash_s / read_s, 2),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "weights_hash_cost.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
