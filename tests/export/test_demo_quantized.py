"""The trained demo's int4 export against its dequantized reference, through `moe-compile
validate`: prompts at fp32's tolerance, decode steps (int8 activations, export/length_dispatch.py)
at int8's, and 32 greedy tokens the same as PyTorch's. (The random tiny models' near-tied
tokens may part ways on int8 activations; a trained model's must not.)"""

import json

from moe_compile.cli import main


def test_demo_int4_validates_with_identical_generation(tmp_path, capsys):
    path = tmp_path / "demo-int4.onnx"
    assert main(["export", "demo", "--target", "onnxruntime", "--quantize", "int4", "--out", str(path), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["quantized"]["decode_compute"] == "int8"
    assert main(["validate", "demo", "--onnx", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["generation_identical"]
    assert report["tolerance"] == {"rtol": 1e-4, "atol": 1e-4}
    assert report["decode_tolerance"] == {"rtol": 5e-2, "atol": 1.0}
