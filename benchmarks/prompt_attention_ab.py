"""Long prompts through ONNX Runtime's GroupQueryAttention (moe_compile/export/lowering/prompt_attention.py)
against the export's grouped attention alone, on onnx_speed.py's model (8 query heads over 4
key/value heads, dimension 64) exported fp32 for onnxruntime four ways: the grouped attention
for every input; the kernel for whole causal prompts from 128 tokens, to place the switch; from
512 (the default); and from 512 with the grouped attention left inside the switch's If (as exported
before export/hoisted_attention.py).

Timed by `moe-compile bench`'s own code at 2 threads: prefill of 256, 512, 1024 and 2048 tokens
(and 16 decode steps after each), prefill of 128 and decode after it at batch 1 and 8; each file four
times, the order reversed every other round (onnx_files_ab.py), with each session's peak memory. Then one
decode step after 128 and 2048 cached positions, in a fresh session of each file, 12 rounds
(decode_step_times: the cost of the switch at decode is a few per cent, below what two rounds
resolve). The logits compared are of a 64-token prompt (below the switch); parity above it:
tests/export/test_grouped_attention.py. Prints JSON; saves it under
benchmarks/results/prompt_attention_ab.json.

    python benchmarks/prompt_attention_ab.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import run_file_ab  # noqa: E402


def export_all(ir, folder: Path) -> tuple[dict[str, Path], dict]:
    from moe_compile.export import exporter
    from moe_compile.export import grouped_attention as attention
    from moe_compile.export.lowering.prompt_attention import count_prompt_kernels

    default = f"kernel from {attention.MIN_PROMPT_KERNEL_TOKENS} (default)"
    files = {"grouped only": folder / "grouped.onnx", "kernel from 128": folder / "from128.onnx",
             "kernel from 512, grouped inside the If": folder / "inside.onnx", default: folder / "default.onnx"}
    grouped = exporter.grouped_attention
    with mock.patch.object(exporter, "grouped_attention",
                           lambda model, **options: grouped(model, **{**options, "prompt_kernel": False})):
        exporter.export_onnx(ir, files["grouped only"], target="onnxruntime")
    with mock.patch.object(attention, "MIN_PROMPT_KERNEL_TOKENS", 128):
        exporter.export_onnx(ir, files["kernel from 128"], target="onnxruntime")
    with mock.patch.object(exporter, "hoist_grouped_attention", lambda graph, outer: count_prompt_kernels(graph.node)):
        exporter.export_onnx(ir, files["kernel from 512, grouped inside the If"], target="onnxruntime")
    exporter.export_onnx(ir, files[default], target="onnxruntime")
    return files, {}


def main() -> None:
    from moe_compile.validate.bench import Workload

    workloads = [Workload(1, 128, 32), Workload(8, 128, 16), Workload(1, 256, 16), Workload(1, 512, 16), Workload(1, 1024, 16),
                 Workload(1, 2048, 16)]
    run_file_ab("prompt_attention_ab", export_all, workloads, decode_steps=(128, 2048), rounds=4)


if __name__ == "__main__":
    main()
