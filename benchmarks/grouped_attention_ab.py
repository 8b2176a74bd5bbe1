"""The export's grouped attention (moe_compile/export/grouped_attention.py: query heads stacked per
key/value head, the cache read in place) against the SDPA form torch.onnx writes from transformers'
attention (every key/value head repeated over its query heads, an Expand and a Transpose of the
whole cache per layer and step), on onnx_speed.py's model (8 query heads over 4 key/value heads)
exported fp32 for onnxruntime both ways.

Timed by `moe-compile bench`'s own code at 2 threads: decode at batch 1 after 16 (onnx_speed.py's
workload), 128, 512 and 2048-token prompts and at batch 8 after 128, with those prefills; each
file twice, alternating (onnx_files_ab.py), with each session's peak memory; the logits of one
prompt compared. Prints JSON; saves it under benchmarks/results/grouped_attention_ab.json.

    python benchmarks/grouped_attention_ab.py
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from onnx_files_ab import run_file_ab  # noqa: E402


def export_both(ir, folder: Path) -> tuple[dict[str, Path], dict]:
    from moe_compile.export import exporter

    files = {"sdpa form": folder / "sdpa.onnx", "grouped": folder / "grouped.onnx"}
    exporter.export_onnx(ir, files["grouped"], target="onnxruntime")
    # the export before grouped attention: the same trace with transformers' SDPA attention left as it is
    with mock.patch.object(exporter, "grouped_attention", lambda model, **options: contextlib.nullcontext(False)):
        exporter.export_onnx(ir, files["sdpa form"], target="onnxruntime")
    return files, {}


def main() -> None:
    from moe_compile.validate.bench import Workload

    workloads = [Workload(1, 16, 64), Workload(1, 128, 32), Workload(8, 128, 16), Workload(1, 512, 16),
                 Workload(1, 2048, 16)]
    run_file_ab("grouped_attention_ab", export_both, workloads)


if __name__ == "__main__":
    main()
