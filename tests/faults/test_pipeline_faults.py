"""`moe-compile MODEL --budget F --out model.onnx` writes its plan, the plan's plot and the ONNX
all or none (atomic.all_or_none): a stage that fails late, a failed parity check, or SIGTERM at
any stage leaves the folder as it was. Before, the plan and plot stayed behind.

The fast cases stand in for the export and the check (they write or fail as the real ones do,
in milliseconds); the slow case signals the real pipeline in a subprocess at every stage."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
from fault_helpers import snapshot

import moe_compile.commands.export as pipeline
from moe_compile.errors import InvalidInput

PREVIOUS = {"model.onnx": b"the previous model", "model.lexi-plan.json": b"the previous plan"}


@pytest.fixture
def folder(tmp_path):
    for name, content in PREVIOUS.items():
        (tmp_path / name).write_bytes(content)
    return tmp_path


def _fake_export(fail: Exception | None = None, signal_after: bool = False):
    def export(moe_model, out, **options):
        out.write_bytes(b"a new model")
        (out.parent / f"{out.name}.data").write_bytes(b"its weights")
        if fail:
            raise fail
        if signal_after:
            os.kill(os.getpid(), signal.SIGTERM)
        report = SimpleNamespace(layers=[{"layer": 0, "top_k": 2, "lowered_to": "standard", "routing": "x"}])
        return SimpleNamespace(to_json=lambda: {"onnx": str(out), "target": "onnx", "dtype": "fp32",
                                                 "moe_layers": report.layers})

    return export


def _fake_check(passed: bool, signal_during: bool = False):
    def check(moe_model, path, plan=None):
        assert path.read_bytes() == b"a new model"  # the staged file is what gets checked
        if signal_during:
            os.kill(os.getpid(), signal.SIGTERM)
        return SimpleNamespace(passed=passed)

    return check


CASES = {
    # (export, check, exit code, stderr line)
    "export fails late": (_fake_export(fail=InvalidInput("bf16 is not supported on CPU")), None, 2,
                          "moe-compile: error: bf16 is not supported on CPU"),
    "parity fails": (_fake_export(), _fake_check(passed=False), 1, None),
    "SIGTERM after export": (_fake_export(signal_after=True), None, 143,
                             "moe-compile: interrupted (SIGTERM); outputs left as they were"),
    "SIGTERM during the check": (_fake_export(), _fake_check(passed=True, signal_during=True), 143,
                                 "moe-compile: interrupted (SIGTERM); outputs left as they were"),
}


@pytest.mark.parametrize("export, check, code, line", CASES.values(), ids=CASES.keys())
def test_a_failed_pipeline_leaves_the_folder_as_it_was(export, check, code, line, tiny_model_dirs, folder,
                                                       monkeypatch, cli):
    import moe_compile.validate.parity as parity

    monkeypatch.setattr(pipeline, "export_with_progress", export)
    monkeypatch.setattr(parity, "validate_onnx", check or _fake_check(passed=True))
    monkeypatch.setattr(pipeline, "print_parity", lambda report, as_json: None)
    outcome = cli(tiny_model_dirs["qwen2_moe"], "--budget", "0.75", "--out", folder / "model.onnx")
    assert outcome.code == code, outcome.stderr
    assert "Traceback" not in outcome.stderr
    if line:
        assert outcome.stderr.strip().splitlines() == [line]
    assert snapshot(folder) == PREVIOUS


def test_a_passing_pipeline_commits_every_file(tiny_model_dirs, folder, monkeypatch, cli):
    import moe_compile.validate.parity as parity

    monkeypatch.setattr(pipeline, "export_with_progress", _fake_export())
    monkeypatch.setattr(parity, "validate_onnx", _fake_check(passed=True))
    monkeypatch.setattr(pipeline, "print_parity", lambda report, as_json: None)
    assert cli(tiny_model_dirs["qwen2_moe"], "--budget", "0.75", "--out", folder / "model.onnx").code == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.lexi-plan.json", "model.lexi-plan.png", "model.onnx", "model.onnx.data"]
    assert (folder / "model.onnx").read_bytes() == b"a new model"


# The real pipeline in a subprocess, SIGTERM when a stage's function returns.
SIGNAL_AFTER = """
import os, signal, sys, importlib
module, name = sys.argv[1].rsplit(".", 1)
owner = importlib.import_module(module)
original = getattr(owner, name)
def signalling(*args, **kwargs):
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return result
setattr(owner, name, signalling)
from moe_compile.cli import main
sys.exit(main(sys.argv[2:]))
"""

STAGES = ["moe_compile.commands.lexi.make_plan", "moe_compile.commands.lexi.plot_plan",
          "moe_compile.commands.export.load_moe_model", "moe_compile.export.exporter._save_streamed",
          "moe_compile.commands.export.print_parity"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_sigterm_at_every_stage_of_the_real_pipeline(stage, tiny_model_dirs, folder):
    result = subprocess.run([sys.executable, "-c", SIGNAL_AFTER, stage, str(tiny_model_dirs["qwen2_moe"]),
                             "--budget", "0.75", "--out", str(folder / "model.onnx")],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600, check=False)
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines() == ["moe-compile: interrupted (SIGTERM); outputs left as they were"]
    assert snapshot(folder) == PREVIOUS
