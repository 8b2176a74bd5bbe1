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


def test_a_speed_session_reads_its_weights_file_ahead_and_validate_does_not(tiny_onnx, monkeypatch):
    """bench's and eval's sessions read `model.onnx.data` once through the page cache before ONNX
    Runtime maps it (onnxrt.read_ahead_weights: mapped in 2 MiB pages then); validate's does not,
    nor one whose file is more than half the memory available."""
    from moe_compile.validate import memory
    from moe_compile.validate.runners import onnxrt

    size = tiny_onnx.with_name(f"{tiny_onnx.name}.data").stat().st_size
    assert size > 0 and onnxrt.read_ahead_weights(tiny_onnx) == size
    reads = []
    monkeypatch.setattr(onnxrt, "read_ahead_weights", lambda path, graph=None: reads.append(path) or 0)
    OnnxRuntimeRunner(tiny_onnx)
    OnnxRuntimeRunner(tiny_onnx, prepack=False)
    assert reads == [tiny_onnx]
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * size - 2)
    assert onnxrt.read_ahead_weights(tiny_onnx) == 0
    assert onnxrt.read_ahead_weights(tiny_onnx.with_name("missing.onnx")) == 0
