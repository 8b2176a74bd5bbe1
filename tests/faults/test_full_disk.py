"""A full disk, a read-only folder, an output under a file: one line, exit 2, nothing left.
Before, every command ended in an OSError traceback (exit 1), `plan` printed two, and the
pipeline left its plan behind."""

import os
import resource
import signal
import subprocess
import sys

import pytest
from fault_helpers import snapshot

COMMANDS = {
    "profile": ["profile", "{model}", "--draws", "1", "--out", "{out}/profile.json"],
    "plan": ["plan", "{model}", "--draws", "1", "--budget", "0.75", "--out", "{out}/plan.json"],
    "export": ["export", "{model}", "--target", "onnx", "--out", "{out}/model.onnx"],
    "pipeline": ["{model}", "--budget", "0.75", "--out", "{out}/model.onnx"],
    "deploy": ["deploy", "{onnx}", "--repo", "{out}/repo", "--name", "tiny"],
    "bench": ["bench", "{model}", "--backends", "pytorch", "--batch", "1", "--prompt", "4", "--new-tokens", "2",
              "--repeats", "1", "--plot", "{out}/bench.png", "--out", "{out}/bench.json"],
}


def _argv(command, model, onnx, out):
    return [arg.format(model=model, onnx=onnx, out=out) for arg in COMMANDS[command]]


@pytest.fixture
def exported(tiny_onnx):
    return tiny_onnx


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c == "export" else c for c in COMMANDS])
def test_full_disk(command, full_disk, tiny_model_dirs, exported, cli):
    """`export` fails only at its write, after the whole export (20 s here): slow; the fast
    case below writes a small ONNX model through the exporter's same save."""
    outcome = cli(*_argv(command, tiny_model_dirs["qwen2_moe"], exported, full_disk))
    outcome.refused("cannot write into", str(full_disk), "No space left on device")
    assert snapshot(full_disk) == {}


def test_full_disk_at_the_exporters_save(full_disk, exported):
    import onnx

    from moe_compile.atomic import writing_into
    from moe_compile.errors import InvalidInput
    from moe_compile.export.exporter import _save

    out = full_disk / "model.onnx"
    with pytest.raises(InvalidInput, match=f"cannot write into {full_disk} .No space left on device"):
        with writing_into(full_disk, full_disk / f".{out.name}"):
            _save(onnx.load(exported), out)
    assert snapshot(full_disk) == {}


def _no_writes():
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG


def test_full_disk_without_tmpfs(exported, tmp_path):
    """The same fault where no tmpfs can be mounted: a process that may not write a byte."""
    result = subprocess.run([sys.executable, "-m", "moe_compile", *_argv("deploy", "", exported, tmp_path)],
                            capture_output=True, text=True, preexec_fn=_no_writes, check=False, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == f"moe-compile: error: cannot write into --repo {tmp_path / 'repo'} (File too large)"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write to: a read-only bind mount where we may mount, else mode 0o555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True,
                             check=False).returncode == 0
    if not mounted:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("root without mount: a mode cannot make a folder read-only")
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=False)
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["plan", "deploy", "pipeline"])
def test_read_only_output_folder(command, read_only, tiny_model_dirs, exported, cli):
    outcome = cli(*_argv(command, tiny_model_dirs["qwen2_moe"], exported, read_only))
    assert outcome.code == 2 and "Traceback" not in outcome.stderr
    outcome.refused(str(read_only))
    assert snapshot(read_only) == {}


@pytest.mark.parametrize("command", ["plan", "deploy", "pipeline", "bench"])
def test_output_under_a_file(command, tiny_model_dirs, exported, cli, tmp_path):
    (tmp_path / "file").write_text("a file")
    outcome = cli(*_argv(command, tiny_model_dirs["qwen2_moe"], exported, tmp_path / "file"))
    outcome.refused("file")
    assert snapshot(tmp_path) == {"file": b"a file"}
