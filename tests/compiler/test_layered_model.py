"""The layer-by-layer reference (compiler/layered_model.py): the same numbers as the loaded
model, prefill and a decode step with the KV cache, for every adapter at a plan's top-k; and
no weights resident between forwards (only the computed buffers are left)."""

import numpy as np
import pytest
import torch

from moe_compile.compiler.adapters import supported_model_types
from moe_compile.compiler.compiled import compiled_model
from moe_compile.compiler.layered_model import layered_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.compiler.weight_sources import WeightSources
from moe_compile.export.decoder import decoder_inputs, empty_past
from moe_compile.validate.runners import TorchRunner


def _prefill_then_decode(model) -> list[dict]:
    runner = TorchRunner(model)
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    prefill = runner.infer(decoder_inputs(model, prompt, empty_past(model, 2, model.dtype)).as_feed(runner.num_layers))
    present = tuple(torch.from_numpy(prefill[name]) for name in runner.output_names[1:])
    next_ids = torch.from_numpy(prefill["logits"][:, -1].argmax(-1))[:, None]
    decode = runner.infer(decoder_inputs(model, next_ids, present).as_feed(runner.num_layers))
    return [prefill, decode]


@pytest.mark.parametrize("model_type", supported_model_types())
def test_layered_model_computes_what_the_loaded_model_does(model_type, tiny_model_dirs):
    moe_model = load_moe_model(tiny_model_dirs[model_type])
    top_k = {spec.index: max(1, spec.base_top_k - 1) for spec in moe_model.layers}
    loaded, _ = compiled_model(moe_model, "fp32", top_k)
    layered, _ = layered_model(moe_model, "fp32", top_k)
    for expected, got in zip(_prefill_then_decode(loaded), _prefill_then_decode(layered)):
        assert expected.keys() == got.keys()
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)

    assert not [name for name, p in layered.named_parameters() if p.numel()]
    sources = WeightSources(layered, moe_model)
    assert not [name for name, b in layered.named_buffers() if b.numel() and sources.recipe(name) is not None]


@pytest.mark.parametrize("model_type", ["qwen2_moe", "deepseek_v3"])
def test_layered_model_reads_experts_one_at_a_time(model_type, tiny_model_dirs, monkeypatch):
    """Where the architecture stores its experts one by one, a layer's experts and router are read
    tensor by tensor, never as the assembled layer (which sat beside its fp32 copy: 1.1 GB of bf16
    for a Qwen1.5-MoE layer); the numbers are the loaded model's (the test above)."""
    from moe_compile.compiler.weight_sources import LayerWeights

    assembled = []
    read = LayerWeights.read
    monkeypatch.setattr(LayerWeights, "read", lambda self, path, field: assembled.append(field) or read(self, path, field))
    moe_model = load_moe_model(tiny_model_dirs[model_type])
    assert moe_model.adapter.reads_one_expert()
    layered, _ = layered_model(moe_model, "fp32")
    _prefill_then_decode(layered)
    assert not {"router_weight", "gate_up", "down"} & set(assembled), assembled


def test_validate_runs_the_layered_reference_over_the_size_limit(tiny_model_dirs, tiny_onnx, monkeypatch, capsys):
    """A model over LOADED_MAX_BYTES (here lowered below the tiny model's size) is validated
    against the layer-by-layer reference: it is the one built, and the file passes against it."""
    import moe_compile.compiler.layered_model as layered
    from moe_compile.cli import main

    built = []
    monkeypatch.setattr(layered, "LOADED_MAX_BYTES", 1024)
    monkeypatch.setattr(layered, "layered_model", lambda *args, **kwargs: built.append(args) or layered_model(*args, **kwargs))
    assert main(["validate", str(tiny_model_dirs["qwen2_moe"]), "--onnx", str(tiny_onnx)]) == 0, capsys.readouterr()
    assert len(built) == 1


@pytest.mark.parametrize("model_type", ["qwen2_moe", pytest.param("deepseek_v3", marks=pytest.mark.slow)])
def test_quantized_reference_layer_by_layer_is_the_loaded_one(model_type, tiny_model_dirs, monkeypatch):
    """A quantized file's reference (its weights dequantized) run layer by layer, each unit
    dequantized as it is read, computes what the loaded, dequantized model does."""
    import moe_compile.compiler.layered_model as layered
    from moe_compile.validate.parity import reference_model

    moe_model = load_moe_model(tiny_model_dirs[model_type])
    top_k = {spec.index: spec.base_top_k for spec in moe_model.layers}
    metadata = {"moe_compile.dtype": "fp32", "moe_compile.quantize": "int4/16"}
    loaded = reference_model(moe_model, metadata, top_k)
    monkeypatch.setattr(layered, "LOADED_MAX_BYTES", 1024)
    by_layer = reference_model(moe_model, metadata, top_k)
    assert not [name for name, p in by_layer.named_parameters() if p.numel()]  # it is the layered one
    unquantized = compiled_model(moe_model, "fp32", top_k)[0]
    for expected, got, far in zip(_prefill_then_decode(loaded), _prefill_then_decode(by_layer),
                                  _prefill_then_decode(unquantized)):
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert not np.allclose(far["logits"], expected["logits"], atol=1e-4)  # the dequantized weights differ


def test_validate_of_a_quantized_file_over_the_size_limit_runs_layer_by_layer(tiny_model_dirs, tmp_path, monkeypatch,
                                                                             capsys):
    import moe_compile.compiler.layered_model as layered
    from moe_compile.cli import main

    built = []
    out = tmp_path / "model.onnx"
    folder = str(tiny_model_dirs["qwen3_moe"])
    assert main(["export", folder, "--target", "onnxruntime", "--quantize", "int4", "--block-size", "16",
                 "--out", str(out)]) == 0, capsys.readouterr()
    monkeypatch.setattr(layered, "LOADED_MAX_BYTES", 1024)
    monkeypatch.setattr(layered, "layered_model", lambda *args, **kwargs: built.append(args) or layered_model(*args, **kwargs))
    assert main(["validate", folder, "--onnx", str(out)]) == 0, capsys.readouterr()
    assert len(built) == 1
