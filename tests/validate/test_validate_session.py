"""validate's ONNX Runtime session reads the weights where the file is mapped: no prepacked copies
(the memory of a parity check on a large model, docs/export.md); bench keeps ONNX Runtime's default."""

from moe_compile.compiler.loader import load_moe_model
from moe_compile.validate import parity
from moe_compile.validate.runners.onnxrt import OnnxRuntimeRunner

PREPACKING_OFF = "session.disable_prepacking"


def prepacking_off(runner: OnnxRuntimeRunner) -> bool:
    try:
        return runner.session.get_session_options().get_session_config_entry(PREPACKING_OFF) == "1"
    except RuntimeError:  # onnxruntime raises for an entry never set
        return False


def test_validate_opens_onnx_runtime_without_prepacking(tiny_model_dirs, tiny_onnx, monkeypatch):
    runners = []

    class Recorded(OnnxRuntimeRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    monkeypatch.setattr(parity, "OnnxRuntimeRunner", Recorded)
    report = parity.validate_onnx(load_moe_model(tiny_model_dirs["qwen2_moe"]), tiny_onnx)
    assert report.passed and runners and all(prepacking_off(runner) for runner in runners)


def test_the_default_session_prepacks(tiny_onnx):
    assert not prepacking_off(OnnxRuntimeRunner(tiny_onnx))
    assert prepacking_off(OnnxRuntimeRunner(tiny_onnx, prepack=False))
