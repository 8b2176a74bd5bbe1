"""Attention and norms as the default export writes them (the attention grouped by key/value head,
moe_compile/export/grouped_attention.py) against ONNX Runtime's fused ops
(moe_compile/export/ort_fusions.py: MultiHeadAttention, SimplifiedLayerNormalization,
SkipSimplifiedLayerNormalization), on onnx_speed.py's model exported fp32 for onnxruntime both
ways (the default, and `export --ort-fusions`), to decide the default.

Timed by `moe-compile bench`'s own code at 2 threads: batch 1 with 128, 512, 1024 and
2048-token prompts, batch 8 x 128, decode at batch 1 and 8 after those prompts; each file twice,
alternating (onnx_files_ab.py), with each session's peak memory; the logits of one prompt
compared. Prints JSON; saves it under benchmarks/results/attention_fusion.json.

    python benchmarks/attention_fusion.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import run_file_ab  # noqa: E402


def export_both(ir, folder: Path) -> tuple[dict[str, Path], dict]:
    import onnxscript

    from moe_compile.export.exporter import export_onnx

    files = {"as exported": folder / "plain.onnx", "fused": folder / "fused.onnx"}
    export_onnx(ir, files["as exported"], target="onnxruntime")
    fusions = export_onnx(ir, files["fused"], target="onnxruntime", ort_fusions=True).report.ort_fusions
    return files, {"onnxscript": onnxscript.__version__, "fused_ops": fusions}


def main() -> None:
    from moe_compile.validate.bench import Workload

    workloads = [Workload(1, 128, 32), Workload(8, 128, 16), Workload(1, 512, 4), Workload(1, 1024, 4),
                 Workload(1, 2048, 4)]
    run_file_ab("attention_fusion", export_both, workloads)


if __name__ == "__main__":
    main()
