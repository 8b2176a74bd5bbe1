"""The tiny model's engine, built and run: parity with the PyTorch reference (prefill, decode,
generation), validate/bench --engine and the whole pipeline. Needs TensorRT and a GPU."""

import json

import numpy as np
import pytest
import torch

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.export.decoder import decoder_inputs, empty_past
from moe_compile.compiler.compiled import compiled_model
from moe_compile.export.exporter import export_onnx
from moe_compile.plugins.tensorrt.builder import build_engine
from moe_compile.validate.parity import validate_engine
from moe_compile.validate.runners import TensorRTRunner

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]
MODEL = "qwen2_moe"


@pytest.fixture(scope="module")
def built(tiny_model_dirs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    export_onnx(load_moe_model(tiny_model_dirs[MODEL]), folder / "model.onnx", target="tensorrt")
    summary = build_engine(folder / "model.onnx", folder / "engine.plan", max_batch=4, max_seq=64,
                           timing_cache=folder / "timing.cache", progress=False)
    return folder, summary


def test_build_summary(built):
    folder, summary = built
    assert (folder / "engine.plan").stat().st_size == summary.engine_bytes > 0
    assert (folder / "timing.cache").stat().st_size > 0
    assert summary.precision == "fp32" and summary.grouped_moe_nodes == 2  # layers 0 and 2 are MoE layers
    assert summary.layers > 0 and summary.device_memory_bytes > 0
    assert sum(summary.plugin_layers.values()) >= summary.grouped_moe_nodes
    assert summary.profiles["decode"]["input_ids"] == {"min": [1, 1], "opt": [4, 1], "max": [4, 1]}
    assert summary.profiles["prefill"]["input_ids"] == {"min": [1, 1], "opt": [1, 64], "max": [4, 64]}
    assert sorted(p.name for p in folder.iterdir()) == ["engine.plan", "model.onnx", "timing.cache"]


def test_engine_matches_the_reference_in_prefill_and_decode(built, tiny_model_dirs):
    folder, _ = built
    report = validate_engine(load_moe_model(tiny_model_dirs[MODEL]), folder / "engine.plan", new_tokens=16)
    assert report.runtime == "tensorrt" and report.target == "tensorrt"
    assert all(d.passed for d in report.prefill) and all(d.passed for d in report.decode), report.to_json()
    assert report.generation_identical


def test_runner_refuses_a_shape_outside_the_profile(built, tiny_model_dirs):
    folder, _ = built
    ir = load_moe_model(tiny_model_dirs[MODEL])
    model, _ = compiled_model(ir)
    runner = TensorRTRunner(folder / "engine.plan")
    feed = decoder_inputs(model, torch.zeros(5, 2, dtype=torch.long), empty_past(model, 5, model.dtype)).as_feed(
        model.config.num_hidden_layers)
    with pytest.raises(InvalidInput, match="input 'input_ids' of shape \\(5, 2\\) is outside the engine's profile"):
        runner.infer(feed)
    small = {name: value[:1] for name, value in feed.items()}
    assert np.isfinite(runner.infer(small)["logits"]).all()


def test_rebuild_reuses_the_timing_cache(built):
    folder, _ = built
    summary = build_engine(folder / "model.onnx", folder / "again.plan", max_batch=4, max_seq=64,
                           timing_cache=folder / "timing.cache", progress=False)
    assert summary.timing_cache == str(folder / "timing.cache") and (folder / "again.plan").is_file()


def test_validate_and_bench_with_the_engine(built, tiny_model_dirs, capsys):
    folder, _ = built
    model = str(tiny_model_dirs[MODEL])
    assert main(["validate", model, "--engine", str(folder / "engine.plan"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]
    assert main(["bench", model, "--engine", str(folder / "engine.plan"), "--backends", "pytorch,tensorrt",
                 "--batch", "1", "--prompt", "4", "--new-tokens", "2", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["backend"], r["setting"]) for r in rows] == [("pytorch", "base"), ("tensorrt", "base")]


def test_validate_refuses_another_models_engine(built, tiny_model_dirs, capsys):
    folder, _ = built
    assert main(["validate", str(tiny_model_dirs["olmoe"]), "--engine", str(folder / "engine.plan")]) == 2
    assert "was exported from another model" in capsys.readouterr().err


def test_pipeline_to_an_engine(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "engine.plan"
    assert main([str(tiny_model_dirs[MODEL]), "--budget", "0.75", "--out", str(out)]) == 0
    assert "TensorRT" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.lexi-plan.json", "engine.lexi-plan.png",
                                                           "engine.plan"]  # the ONNX was temporary
