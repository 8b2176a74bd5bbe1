"""An interrupted run (Ctrl-C, SIGTERM) leaves the previous output intact and no temporary
files: `moe-compile export` in a subprocess, signalled while it works (SIGTERM is handled as
Ctrl-C: interrupts.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Runs the real CLI with one function wrapped to signal the process when it returns: "save",
# onnx.save_model, right after the staged model is written and before it is renamed onto
# --out (the worst moment to be stopped); "translate", the GroupedMoE translation, deep inside
# torch.onnx's tracing (which catches the KeyboardInterrupt and raises an export failure).
SIGNAL_DURING = """
import os, signal, sys
import onnx
import moe_compile.export.exporter as exporter

def signalling(function):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return result
    return wrapped

if sys.argv[2] == "save":
    onnx.save_model = signalling(onnx.save_model)
else:
    translation = exporter.translation
    exporter.translation = lambda *args: signalling(translation(*args))
from moe_compile.cli import main
sys.exit(main(sys.argv[3:]))
"""

PREVIOUS = b"the previous model.onnx"


def _export_argv(model, out):
    return ["export", str(model), "--target", "onnx", "--out", str(out)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _check_interrupted(returncode, stderr, folder, signum):
    stderr = stderr.decode()
    assert returncode == 128 + signum, stderr
    assert stderr.strip().splitlines() == [
        f"moe-compile: interrupted ({signal.Signals(signum).name}); outputs left as they were"]
    assert (folder / "model.onnx").read_bytes() == PREVIOUS
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]  # no staging folder, no temporary


@pytest.mark.parametrize("signum, where", [
    pytest.param(signal.SIGTERM, "save", id="SIGTERM-save"),
    pytest.param(signal.SIGTERM, "translate", id="SIGTERM-translate", marks=pytest.mark.slow),  # one handler for both
    pytest.param(signal.SIGINT, "translate", id="SIGINT-translate")])
def test_signal_inside_the_export(signum, where, tiny_model_dirs, tmp_path):
    (tmp_path / "model.onnx").write_bytes(PREVIOUS)
    argv = _export_argv(tiny_model_dirs["olmoe"], tmp_path / "model.onnx")
    result = subprocess.run([sys.executable, "-c", SIGNAL_DURING, signal.Signals(signum).name, where, *argv],
                            capture_output=True, env=_env(), timeout=600, check=False)
    _check_interrupted(result.returncode, result.stderr, tmp_path, signum)


def _has_mapped(pid: int, path: Path) -> bool:
    """Whether the process has `path` memory-mapped (Linux: /proc/PID/maps)."""
    try:
        return str(path) in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches the process through /proc (Linux)")
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow),
                                    pytest.param(signal.SIGTERM, id="SIGTERM")])  # SIGINT inside: above
def test_signal_to_python_m_moe_compile_export(signum, tiny_model_dirs, tmp_path):
    """The plain command, signalled as soon as it has mapped the model's weights: its imports are
    done and the export is under way. (A signal during `import torch` can land in C++ code, where
    any Python exception, Ctrl-C's included, aborts the process; nothing is written by then.) The
    streamed export maps the weights only to write them, 2-4 s before the process ends on this
    machine: signalled a second after that, the process had once already restored the default
    handlers on its way out, and died of the signal (CI, exit -15)."""
    (tmp_path / "model.onnx").write_bytes(PREVIOUS)
    model = tiny_model_dirs["olmoe"]
    process = subprocess.Popen([sys.executable, "-m", "moe_compile", *_export_argv(model, tmp_path / "model.onnx")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 300
    while not _has_mapped(process.pid, model / "model.safetensors") and process.poll() is None:
        assert time.monotonic() < deadline, "the export did not start"
        time.sleep(0.01)
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    _check_interrupted(process.returncode, stderr, tmp_path, signum)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_inside_native_code_is_recorded_not_raised(name):
    """interrupts.deferred (around TensorRT's build, whose progress callback polls `received`):
    the signal is recorded, nothing is raised through native frames, the handlers come back."""
    from moe_compile import interrupts

    before = signal.getsignal(getattr(signal, name))
    interrupts.reset()
    try:
        with interrupts.deferred():
            os.kill(os.getpid(), getattr(signal, name))
            time.sleep(0.05)  # the handler runs between bytecodes of the main thread
            assert interrupts.received() == name
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_received()
    finally:
        interrupts.reset()
    assert signal.getsignal(getattr(signal, name)) is before
