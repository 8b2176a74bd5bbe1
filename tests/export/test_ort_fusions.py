"""`export --ort-fusions`: attention and norms as ONNX Runtime's fused ops (export/ort_fusions.py),
what the report and metadata say, parity by validate on the fused graph (fp32 and int4), and the
refusal off the onnxruntime target at fp32."""

import json

import numpy as np
import onnx

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.exporter import export_onnx
from moe_compile.export.ort_fusions import METADATA_KEY
from moe_compile.export.subgraphs import all_nodes, subgraphs
from moe_compile.quantization.scheme import QuantScheme
from moe_compile.validate.parity import validate_onnx
from tiny_models import prompt_logits


def test_fused_export_says_what_it_fused_and_validates(tiny_model_dirs, tiny_onnx, tmp_path, capsys):
    model = str(tiny_model_dirs["qwen2_moe"])
    path = tmp_path / "fused.onnx"
    assert main(["export", model, "--target", "onnxruntime", "--ort-fusions", "--out", str(path), "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)["ort_fusions"]
    layers = load_moe_model(model).config.num_hidden_layers
    assert fused["MultiHeadAttention"] == layers and fused["SkipSimplifiedLayerNormalization"] > 0, fused
    graph = onnx.load(path, load_external_data=False)
    for body in subgraphs(graph.graph.node[-1]):  # split by length (export/length_dispatch.py): both bodies fused
        ops = [node.op_type for node in body.node]
        assert {op: ops.count(op) for op in fused} == fused, body.name  # the report counts what the file holds
    assert json.loads({p.key: p.value for p in graph.metadata_props}[METADATA_KEY]) == fused
    plain = onnx.load(tiny_onnx, load_external_data=False)
    assert "MultiHeadAttention" not in {node.op_type for node in all_nodes(plain.graph.node)}  # not the default
    assert METADATA_KEY not in {p.key for p in plain.metadata_props}
    np.testing.assert_allclose(prompt_logits(path), prompt_logits(tiny_onnx), rtol=1e-4, atol=1e-4)
    assert main(["validate", model, "--onnx", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def test_fused_int4_export_validates(tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs["olmoe"])
    result = export_onnx(ir, tmp_path / "int4.onnx", target="onnxruntime", quantize=QuantScheme("int4", 16),
                         ort_fusions=True)
    assert result.report.ort_fusions["MultiHeadAttention"] == ir.config.num_hidden_layers
    report = validate_onnx(ir, tmp_path / "int4.onnx")
    assert report.passed and report.generation_identical, report.to_json()


def test_fusions_off_the_onnxruntime_target_at_fp32_are_refused(tiny_model_dirs, tmp_path, capsys):
    for extra in (["--target", "onnx"], ["--dtype", "fp16"]):
        capsys.readouterr()
        assert main(["export", str(tiny_model_dirs["qwen2_moe"]), "--ort-fusions", *extra,
                     "--out", str(tmp_path / "m.onnx")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--ort-fusions: only for --target onnxruntime at --dtype fp32" in err, err
    assert list(tmp_path.iterdir()) == []
