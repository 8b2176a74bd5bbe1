"""The demo's export with and without export/rewrite_speed.py, alternating in one run on one machine.

Each round exports the model twice through `export_onnx` (onnxruntime target, fp32): once as
shipped (onnxscript's two-output rewrite rules check the node's op first) and once with that
check off (onnxscript as it comes), and records the wall time of each; the graphs of the two
files are compared byte for byte (they must be the same). Prints JSON; saves it under
benchmarks/results/export_rewrite_ab.json.

    python benchmarks/export_rewrite_ab.py [--model demo] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def timed_export(moe_model, out: Path, linear: bool) -> float:
    from moe_compile.export import exporter
    from moe_compile.export.rewrite_speed import linear_default_rewrites

    exporter.linear_default_rewrites = linear_default_rewrites if linear else contextlib.nullcontext
    try:
        start = time.perf_counter()
        exporter.export_onnx(moe_model, out, target="onnxruntime")
        return time.perf_counter() - start
    finally:
        exporter.linear_default_rewrites = linear_default_rewrites


def graph_bytes(path: Path) -> bytes:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "export_rewrite_ab.json")
    args = parser.parse_args()

    import torch

    from moe_compile.compiler.loader import load_moe_model

    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()
    moe_model = load_moe_model(args.model)
    times = {"op checked first": [], "onnxscript as it comes": []}
    with tempfile.TemporaryDirectory() as folder:
        # one folder each, the same file name: the graph names its external data file
        files = {name: Path(folder) / str(index) / "model.onnx" for index, name in enumerate(times)}
        for path in files.values():
            path.parent.mkdir()
        for _ in range(args.rounds):
            for name, linear in zip(times, (True, False)):
                times[name].append(round(timed_export(moe_model, files[name], linear), 2))
        same_graph = graph_bytes(files["op checked first"]) == graph_bytes(files["onnxscript as it comes"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "load_at_start": load_at_start, "load_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxscript": __import__("onnxscript").__version__},
        "model": args.model,
        "export_s": times,
        "median_s": medians,
        "speedup": round(medians["onnxscript as it comes"] / medians["op checked first"], 3),
        "same_graph": same_graph,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if same_graph else 1


if __name__ == "__main__":
    sys.exit(main())
