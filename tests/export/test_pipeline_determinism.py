"""Determinism of the whole pipeline: `moe-compile MODEL --budget F --out model.onnx` twice with
the same options gives byte-identical plan and ONNX files (export alone: test_export.py)."""

from moe_compile.cli import main


def test_pipeline_twice_gives_identical_plan_and_onnx(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    argv = [str(tiny_model_dirs["olmoe"]), "--budget", "0.5", "--out", str(out)]
    assert main(argv) == 0
    first = {name: (tmp_path / name).read_bytes() for name in ("model.lexi-plan.json", "model.onnx")}
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model.lexi-plan.json").unlink()
    assert main(argv) == 0
    capsys.readouterr()
    for name, content in first.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} differs between two identical runs"
