"""GroupQueryAttention without its scores output (lowering/prompt_attention.py: drop_score_outputs)
against the node as the trace writes it, with its fourth output `output_qk`, which ONNX Runtime
fills with the [B, heads, S, S] attention scores at every call; onnx_speed.py's model (8 query heads
over 4 key/value heads, dimension 64) exported fp32 for onnxruntime both ways.

Timed by `moe-compile bench`'s own code at 2 threads: prefill of 512, 2048 and 4000 tokens (and a
few decode steps after each, which never run the node), each file in six rounds, the order
reversed every other round (onnx_files_ab.py): this VM has slow spells that last a round or two.
The logits compared are of a 600-token prompt (through the node). Then each file's peak resident
memory in a fresh process that loads it and runs one 4000-token prompt (`peak_rss_mb_4000_tokens`:
the one number here that is not a growth). Prints JSON; saves it under
benchmarks/results/prompt_qk_output_ab.json.

    python benchmarks/prompt_qk_output_ab.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import run_file_ab  # noqa: E402

LONGEST = 4000  # the model's context is 4096 positions: the prompt and its decode steps fit
WRITTEN, DROPPED = "scores output written (as before)", "scores output dropped (default)"

_PEAK_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = 2; options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
n = int(sys.argv[2])
feed = {"input_ids": np.arange(n, dtype=np.int64)[None] % 2048, "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None]}
feed |= {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in session.get_inputs()
         if i.name.startswith("past_key_values.")}
session.run(None, feed)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def export_all(ir, folder: Path) -> tuple[dict[str, Path], dict]:
    from moe_compile.export import exporter
    from moe_compile.export.lowering.prompt_attention import count_prompt_kernels

    files = {WRITTEN: folder / "written.onnx", DROPPED: folder / "dropped.onnx"}
    with mock.patch.object(exporter, "drop_score_outputs", lambda graph: count_prompt_kernels(graph.node)):
        exporter.export_onnx(ir, files[WRITTEN], target="onnxruntime")
    exporter.export_onnx(ir, files[DROPPED], target="onnxruntime")
    return files, {}


def peak_memory(files: dict[str, Path]) -> dict:
    """Peak resident memory (VmHWM, MB) of a fresh process that runs one LONGEST-token prompt."""
    peaks = {}
    for name, path in files.items():
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path), str(LONGEST)], capture_output=True,
                              text=True, check=True)
        peaks[name] = round(int(done.stdout.split()[-1]) / 1024, 1)
    return {f"peak_rss_mb_{LONGEST}_tokens": peaks}


def main() -> None:
    from moe_compile.validate.bench import Workload

    workloads = [Workload(1, 512, 8), Workload(1, 2048, 8), Workload(1, LONGEST, 4)]
    run_file_ab("prompt_qk_output_ab", export_all, workloads, rounds=6, logit_tokens=600, extra=peak_memory)


if __name__ == "__main__":
    main()
