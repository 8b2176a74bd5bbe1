"""Determinism of the whole pipeline: `moe-compile MODEL --budget F --out X.onnx` twice with the
same options gives the same plan and the same ONNX bytes; the two files differ only in the name of
the external-data file each points to."""

import onnx

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model


def test_pipeline_twice_gives_identical_plan_and_onnx(tiny_model_dirs, tmp_path, capsys):
    for name in ("a", "b"):
        assert main([str(tiny_model_dirs["olmoe"]), "--budget", "0.5", "--out", str(tmp_path / f"{name}.onnx")]) == 0
    capsys.readouterr()
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    assert read("a.lexi-plan.json").replace(b"a.onnx", b"b.onnx") == read("b.lexi-plan.json")  # "command" names --out
    assert read("a.onnx.data") == read("b.onnx.data")
    assert read("a.onnx") != read("b.onnx")  # each names its own data file
    assert read("a.onnx").replace(b"a.onnx.data", b"b.onnx.data") == read("b.onnx")
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "a.onnx", load_external_data=False).metadata_props}
    assert metadata["moe_compile.weights_sha256"] == load_moe_model(tiny_model_dirs["olmoe"]).fingerprint["weights_sha256"]
