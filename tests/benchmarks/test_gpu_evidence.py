"""benchmarks/gpu_evidence.py: its dry run (the six steps on CPU, the same scripts) and its parts."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from benchmark_scripts import benchmark_module

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_evidence.py"


@pytest.fixture(scope="module")
def evidence():
    with benchmark_module("gpu_evidence") as module:
        yield module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evidence")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout)


def test_dry_run_passes_every_step_in_order(dry_run, evidence):
    out, printed = dry_run
    report = json.loads((out / "evidence-dry_run.json").read_text())
    assert [s["step"] for s in report["steps"]] == [step.name for step in evidence.STEPS]
    assert printed["steps"] == {step.name: "passed" for step in evidence.STEPS}, \
        {s["step"]: s["log_tail"] for s in report["steps"] if s["status"] != "passed"}
    assert {"device", "versions", "command", "steps", "targets"} <= set(report)
    assert all(s["command"].startswith("python ") and (out / "logs" / f"{s['step']}.log").is_file()
               for s in report["steps"])


def test_dry_run_writes_each_steps_result(dry_run):
    out, _ = dry_run
    tests = json.loads((out / "tests-dry_run.json").read_text())
    assert tests["passed"] >= 1 and tests["failed"] == 0 and tests["skipped"] >= 2  # the GPU cases skip on CPU
    tables = sorted(p.name for p in (out / "configs").glob("*device_name=cpu.json"))  # beside the committed ones
    assert tables == ["E=128,N=16,device_name=cpu.json", "E=60,N=16,device_name=cpu.json"]
    assert set(json.loads((out / "configs" / tables[0]).read_text())) == {"1", "5"}
    kernel = json.loads((out / "kernel-dry_run.json").read_text())
    assert [r["tokens"] for r in kernel["rows"]] == [1, 5] and all(r["ours_us"] > 0 for r in kernel["rows"])
    assert kernel["lexi"]["tokens"]["1"]["speedup"] > 0
    peers = json.loads((out / "peers" / "kernel-dry_run.json").read_text())
    assert [r["shape"] for r in peers["rows"]] == ["qwen1.5-moe-a2.7b"]
    with tarfile.open(out / "evidence-bundle.tar.gz") as archive:
        assert {"evidence-dry_run.json", "e2e-dry_run.json", "configs/E=60,N=16,device_name=cpu.json"} <= set(
            archive.getnames())
    aot = json.loads((out / "aot-dry_run.json").read_text())
    assert aot["cases"] and aot["device"] == "dry-run"
    e2e = json.loads((out / "e2e-dry_run.json").read_text())
    assert e2e["parity"]["passed"] and [(r["case"], r["plan"]) for r in e2e["rows"]] == [
        ("prefill", "base"), ("prefill", "plan"), ("decode", "base"), ("decode", "plan")]
    assert all(r["tokens_per_s"] > 0 and r["moe_us"] > 0 for r in e2e["rows"])
    assert e2e["summary"]["prefill"]["plan_speedup_moe"] > 0


def test_dry_run_checks_the_targets_from_the_results(dry_run):
    out, printed = dry_run
    targets = printed["targets"]
    kernel = json.loads((out / "kernel-dry_run.json").read_text())["summary"]
    assert targets["geomean_speedup_vs_best_peer"]["value"] == kernel["geomean_speedup_vs_best_peer"]
    assert targets["decode_hbm_fraction"]["value"] == kernel["min_decode_hbm_fraction"]
    assert targets["prefill_flops_fraction"]["value"] is None  # no dry-run row has 4096 tokens
    e2e = json.loads((out / "e2e-dry_run.json").read_text())["summary"]
    assert targets["plan_speedup_moe_prefill"]["value"] == e2e["prefill"]["plan_speedup_moe"]


def test_a_missed_target_says_by_how_much(evidence):
    kernel = {"summary": {"min_decode_hbm_fraction": 0.6, "min_prefill_flops_fraction": 0.7,
                          "geomean_speedup_vs_best_peer": None}}
    targets = evidence.check_targets(kernel, {"summary": {"prefill": {"plan_speedup_moe": 1.0}}})
    decode = targets["decode_hbm_fraction"]
    assert decode["met"] is False and decode["missed_by"] == pytest.approx(0.2)
    assert decode["missed_by_fraction"] == pytest.approx(0.25)
    assert targets["prefill_flops_fraction"]["met"] is True and targets["prefill_flops_fraction"]["missed_by"] is None
    assert targets["geomean_speedup_vs_best_peer"]["met"] is None
    assert targets["plan_speedup_moe_prefill"]["missed_by"] == pytest.approx(0.25)


def test_a_step_past_its_time_box_is_killed_and_its_log_kept(evidence, tmp_path):
    argv = ["-c", "import time; print('started', flush=True); time.sleep(60)"]
    result = evidence.run_step("slow", argv, 2, tmp_path / "slow.log", {})
    assert result["status"] == "timed_out" and result["seconds"] < 30 and result["log_tail"][0] == "started"


def test_pytest_outcomes_are_read_from_a_log_cut_short(evidence, tmp_path):
    log = tmp_path / "tests.log"
    log.write_text("tests/a.py::test_x[1-2] PASSED   [ 10%]\ntests/a.py::test_y FAILED  [ 20%]\n"
                   "tests/a.py::test_z SKIPPED (no CUDA GPU on this machine)  [ 30%]\n")
    assert evidence.test_results(log) == {"passed": 1, "failed": 1, "skipped": 1, "error": 0,
                                          "failures": ["tests/a.py::test_y"]}


def test_the_gpu_steps_fit_nine_minutes_and_name_the_issue_shapes(evidence):
    assert evidence.STEPS_SECONDS <= 9 * 60
    names = [step.name for step in evidence.STEPS]
    assert names[0] == "tests" and names[-2:] == ["aot", "e2e"] and names.index("kernel") > names.index(
        "tune-qwen3-30b-a3b")
    assert evidence.TUNED_SHAPES == {"qwen1.5-moe-a2.7b": (60, 2048, 1408, 4), "qwen3-30b-a3b": (128, 2048, 768, 8)}


def test_a_step_past_its_time_box_is_interrupted_first_so_that_it_can_report(evidence, tmp_path):
    argv = ["-c", "import time\ntry:\n    print('started', flush=True); time.sleep(60)\n"
                  "except KeyboardInterrupt:\n    print('1 failed, 3 passed (interrupted)')"]
    result = evidence.run_step("slow", argv, 2, tmp_path / "slow.log", {})
    assert result["status"] == "timed_out" and result["log_tail"] == ["started", "1 failed, 3 passed (interrupted)"]


def test_the_bundle_holds_every_result_under_its_own_name(evidence, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "E=60,N=1408,device_name=X.json").write_text("{}")
    (tmp_path / "kernel-X.json").write_text("[]")
    evidence.bundle(tmp_path)
    evidence.bundle(tmp_path)  # rewritten after every step, never holding itself
    with tarfile.open(tmp_path / evidence.BUNDLE) as archive:
        assert sorted(archive.getnames()) == ["configs/E=60,N=1408,device_name=X.json", "kernel-X.json"]
    assert {p.name for p in tmp_path.iterdir()} == {evidence.BUNDLE, "configs", "kernel-X.json"}


def test_the_gpu_tests_named_exist_and_are_gpu_marked(evidence):
    pytest.importorskip("triton")
    import importlib.util

    path = Path(__file__).parents[2] / evidence.TESTS
    spec = importlib.util.spec_from_file_location("grouped_moe_triton_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for node in evidence.GPU_TESTS:
        test = getattr(module, node.rpartition("::")[2])
        assert "gpu" in {mark.name for mark in getattr(test, "pytestmark", [])}, node


def test_named_steps_run_alone_in_the_order_given(tmp_path):
    """--steps: what a later GPU window runs when an earlier one missed some (here a tuning of a
    shape the default run leaves untuned, then the AOT check)."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--steps",
                           "tune-mixtral-8x7b", "aot"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "evidence-dry_run.json").read_text())
    assert [(s["step"], s["status"]) for s in report["steps"]] == [("tune-mixtral-8x7b", "passed"), ("aot", "passed")]
    assert (tmp_path / "configs" / "E=8,N=16,device_name=cpu.json").is_file()
