"""The quality cost of `export --quantize`: perplexity of the demo's fp32, int8 and int4 exports,
each scored in ONNX Runtime by `moe-compile eval --onnx` (commands/eval.py), on the demo's held-out
text and on a text no training used (the Python source of six standard-library modules of the
interpreter that runs this; the demo was trained on docutils' documentation, docs/demo.md).
Each file is scored twice: whole windows as prompts, and one token at a time through the KV cache
(`--stepwise`), which runs a quantized file's decode branch (export/length_dispatch.py).

    python benchmarks/quantize_quality.py
"""

from __future__ import annotations

import inspect
import json
import platform
import sys
import tempfile
from pathlib import Path

from moe_compile.commands.eval import evaluate
from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.exporter import export_onnx
from moe_compile.quantization.scheme import quant_scheme
from moe_compile.versions import package_versions

RESULTS = Path(__file__).parent / "results"
UNSEEN_MODULES = ("textwrap", "shlex", "fractions", "heapq", "difflib", "statistics")
TARGETS = {"int4": 5.0, "int8": 1.0}  # issue 18: % of the fp32 export's perplexity
MODES = ("", "_stepwise")  # whole windows as prompts; one token at a time
SCORES = [f"{text}{mode}" for text in ("heldout", "unseen") for mode in MODES]


def unseen_text(folder: Path) -> Path:
    import importlib

    path = folder / "unseen.txt"
    path.write_text("\n".join(inspect.getsource(importlib.import_module(name)) for name in UNSEEN_MODULES))
    return path


def main() -> None:
    ir = load_moe_model("demo")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        texts = {"heldout": None, "unseen": unseen_text(Path(tmp))}
        for scheme in ("fp32", "int8", "int4"):
            path = Path(tmp) / f"demo_{scheme}.onnx"
            quantize = None if scheme == "fp32" else quant_scheme(scheme, None, ir.config.hidden_size,
                                                                   [spec.intermediate for spec in ir.layers])
            export_onnx(ir, path, target="onnxruntime", quantize=quantize)
            rows[scheme] = {"block_size": quantize.block_size if quantize else None,
                            "bytes": sum(part.stat().st_size for part in (path, path.with_name(path.name + ".data"))
                                         if part.exists()),  # with its external data (the fp32 export streams)
                            **{f"{name}{mode}": evaluate("demo", text=text, onnx=path, stepwise=bool(mode)).to_json()
                               for name, text in texts.items() for mode in MODES}}
    for scheme, row in rows.items():
        for name in SCORES:
            row[name]["vs_fp32_percent"] = 100 * (row[name]["perplexity"] / rows["fp32"][name]["perplexity"] - 1)
    report = {
        "benchmark": "quantize_quality",
        "model": "demo (Qwen2-MoE, hidden 128, 8 layers, 16 experts, top-4)",
        "texts": {"heldout": "the demo's heldout.txt", "unseen": f"Python {platform.python_version()} source of "
                  + ", ".join(UNSEEN_MODULES)},
        "exports": rows,
        "targets_percent": TARGETS,
        "scores": {"heldout/unseen": "each window as one prompt", "..._stepwise": "one token at a time (decode steps)"},
        "targets_met": {s: all(rows[s][t]["vs_fp32_percent"] <= limit for t in SCORES)
                        for s, limit in TARGETS.items()},
        "versions": package_versions(),
        "command": "python benchmarks/quantize_quality.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    json.dump({k: report[k] for k in ("exports", "targets_met")}, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
