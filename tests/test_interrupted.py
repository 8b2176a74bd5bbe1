"""An interrupted run (Ctrl-C, SIGTERM) leaves the previous output intact and no temporary
files: `moe-compile export` in a subprocess, signalled while it works (SIGTERM is handled as
Ctrl-C, cli.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Runs the real CLI, with onnx.save_model wrapped to signal the process right after the staged
# model is written and before it is renamed onto --out: the worst moment to be stopped.
SIGNAL_DURING_SAVE = """
import os, signal, sys
import onnx
save = onnx.save_model
def save_then_signal(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
onnx.save_model = save_then_signal
from moe_compile.cli import main
sys.exit(main(sys.argv[2:]))
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


def test_sigterm_between_staging_and_rename(tiny_model_dirs, tmp_path):
    (tmp_path / "model.onnx").write_bytes(PREVIOUS)
    argv = _export_argv(tiny_model_dirs["olmoe"], tmp_path / "model.onnx")
    result = subprocess.run([sys.executable, "-c", SIGNAL_DURING_SAVE, "SIGTERM", *argv],
                            capture_output=True, env=_env(), timeout=600, check=False)
    _check_interrupted(result.returncode, result.stderr, tmp_path, signal.SIGTERM)


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (Linux: the SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal handlers from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_python_m_moe_compile_export(signum, tiny_model_dirs, tmp_path):
    """The plain command, signalled once main() handles the signal (while it imports torch,
    loads the model or traces it: wherever it is)."""
    (tmp_path / "model.onnx").write_bytes(PREVIOUS)
    argv = _export_argv(tiny_model_dirs["olmoe"], tmp_path / "model.onnx")
    process = subprocess.Popen([sys.executable, "-m", "moe_compile", *argv],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 120
    while not _catches(process.pid, signal.SIGTERM) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # under way
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    _check_interrupted(process.returncode, stderr, tmp_path, signum)
