"""Attention and norms as torch.onnx writes them against ONNX Runtime's fused ops
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

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import compare_files  # noqa: E402
from onnx_speed import THREADS, write_model  # noqa: E402  (the same model, the same seeds)

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    import onnxruntime as ort
    import onnxscript
    import torch

    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx
    from moe_compile.validate.bench import Workload, machine_description

    load_before, start = os.getloadavg(), time.perf_counter()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_model(tmp / "model")
        ir = load_moe_model(tmp / "model")
        files = {"as torch.onnx writes it": tmp / "plain.onnx", "fused": tmp / "fused.onnx"}
        export_onnx(ir, files["as torch.onnx writes it"], target="onnxruntime")
        fusions = export_onnx(ir, files["fused"], target="onnxruntime", ort_fusions=True).report.ort_fusions
        workloads = [Workload(1, 128, 32), Workload(8, 128, 16), Workload(1, 512, 4), Workload(1, 1024, 4),
                     Workload(1, 2048, 4)]
        model = compare_files(ir, files, workloads, THREADS)
    result = {"benchmark": "attention_fusion", "command": "python benchmarks/attention_fusion.py",
              "machine": machine_description(THREADS), "onnxruntime": ort.__version__,
              "onnxscript": onnxscript.__version__, "fused_ops": fusions,
              "load_average_before_after": [load_before, os.getloadavg()],
              "seconds": round(time.perf_counter() - start), "whole_model": model}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_fusion.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key != "whole_model"}
                     | {"summary": model["summary"], "logits": model["logits_max_abs_difference"]}, indent=1))


if __name__ == "__main__":
    main()
