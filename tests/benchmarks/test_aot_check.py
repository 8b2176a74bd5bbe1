"""benchmarks/aot_check.py without a GPU: its dry run compiles every stage for sm_90 exactly as the
plugins' aot_impl does and builds every launch's parameters, up to the driver call."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "aot_check.py"


def test_dry_run_builds_every_launch_and_writes_the_result_schema(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiling needs the real front end
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--layers", "small-fp32", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, check=True)
    report = json.loads((tmp_path / "aot-dry_run.json").read_text())
    assert json.loads(done.stdout) == report
    assert {"device", "versions", "command", "cases", "max_abs_diff", "tolerance"} <= set(report)
    assert report["device"] == "dry-run" and report["max_abs_diff"] is None
    stages = ["GroupedMoERoute", "GroupedMoEScan", "GroupedMoEScatter", "GroupedMoEGateUp", "GroupedMoEDown",
              "GroupedMoECombine"]
    assert [(c["layer"], c["tokens"], c["launches"]) for c in report["cases"]] == [("small-fp32", 1, stages),
                                                                                   ("small-fp32", 17, stages)]
    assert report["command"].endswith("--dry-run --layers small-fp32 --out " + str(tmp_path))


def test_the_checked_layers_cover_ten_shapes_from_decode_to_prefill():
    spec = importlib.util.spec_from_file_location("aot_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        tokens = [t for layer in module.LAYERS for t in layer.tokens]
        assert len(tokens) >= 10 and min(tokens) == 1 and max(tokens) == 4096
        assert any(layer.nan_rows for layer in module.LAYERS) and {layer.dtype for layer in module.LAYERS} == \
            {"bfloat16", "float32"}
    finally:
        del sys.modules[spec.name]
