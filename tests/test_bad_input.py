"""Every malformed input ends with one line on stderr, exit code 2, no traceback, no output."""

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from moe_compile.cli import main


@pytest.fixture
def model_copy(tiny_model_dirs, tmp_path):
    """A fresh copy of a tiny model folder, to break."""
    def copy(model_type: str = "qwen2_moe") -> Path:
        target = tmp_path / f"broken-{model_type}"
        shutil.copytree(tiny_model_dirs[model_type], target)
        return target
    return copy


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _weights(folder: Path) -> Path:
    return folder / "model.safetensors"


def _drop_tensor(folder: Path, name: str) -> None:
    tensors = load_file(_weights(folder))
    del tensors[name]
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


BROKEN = {
    "missing folder": (lambda f: shutil.rmtree(f), "does not exist"),
    "file, not folder": (lambda f: (shutil.rmtree(f), f.write_text("x")), "is a file, not a model folder"),
    "no config.json": (lambda f: (f / "config.json").unlink(), "has no config.json"),
    "config not json": (lambda f: (f / "config.json").write_text("{model_type: qwen2_moe"), "is not valid JSON"),
    "config not an object": (lambda f: (f / "config.json").write_text("[1, 2]"), "must hold a JSON object"),
    "config without model_type": (
        lambda f: (f / "config.json").write_text(json.dumps({"hidden_size": 8})), "has no 'model_type'"),
    "unsupported architecture": (
        lambda f: _edit_config(f, model_type="llama"),
        "model_type 'llama' is not supported (supported: deepseek_v2, deepseek_v3, gpt_oss, mixtral, olmoe, "
        "qwen2_moe, qwen3_moe)"),
    "all layers dense": (lambda f: _edit_config(f, mlp_only_layers=[0, 1, 2]), "has no MoE layers"),
    "zero experts": (lambda f: _edit_config(f, num_experts=0), "has no MoE layers"),
    "top-k above E": (lambda f: _edit_config(f, num_experts_per_tok=9), "layer 0: top_k=9 is outside 1..8"),
    "top-k zero": (lambda f: _edit_config(f, num_experts_per_tok=0), "'num_experts_per_tok' must be a positive"),
    "top-k not a number": (lambda f: _edit_config(f, num_experts_per_tok="two"),
                           "config.json is not a valid qwen2_moe config (Validation error for field "
                           "'num_experts_per_tok': TypeError: Field 'num_experts_per_tok' expected int, got str"),
    "unsupported activation": (lambda f: _edit_config(f, hidden_act="relu"), "hidden_act 'relu' is not supported"),
    "truncated safetensors": (
        lambda f: _weights(f).write_bytes(_weights(f).read_bytes()[: _weights(f).stat().st_size // 2]),
        "is not a readable safetensors file (Error while deserializing header: incomplete metadata"),
    "corrupt safetensors": (
        lambda f: _weights(f).write_bytes(os.urandom(4096)), "is not a readable safetensors file"),
    "empty safetensors": (lambda f: _weights(f).write_bytes(b""), "header too small"),
    "missing tensor": (
        lambda f: _drop_tensor(f, "model.layers.2.mlp.experts.5.up_proj.weight"),
        "tensor 'model.layers.2.mlp.experts.5.up_proj.weight' is missing from the checkpoint"),
    "missing router": (lambda f: _drop_tensor(f, "model.layers.0.mlp.gate.weight"), "'model.layers.0.mlp.gate.weight' is missing"),
    "pickle weights only": (
        lambda f: (_weights(f).unlink(), (f / "pytorch_model.bin").write_bytes(b"\x80\x04")),
        "holds only pickle weights (pytorch_model.bin); moe-compile reads safetensors only"),
    "no weights": (lambda f: _weights(f).unlink(), "has no *.safetensors weights"),
    "index names a missing shard": (
        lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})),
        "names shard 'model-00002-of-00002.safetensors'"),
    "index not json": (
        lambda f: (f / "model.safetensors.index.json").write_text("{"), "not a valid safetensors index"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_folder(case, model_copy, capsys):
    folder = model_copy()
    breaker, message = BROKEN[case]
    breaker(folder)
    before = sorted(p.name for p in folder.parent.iterdir())
    code = main(["inspect", str(folder)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("moe-compile: error: ") and message in err, err
    assert sorted(p.name for p in folder.parent.iterdir()) == before  # nothing written


def test_gpt_oss_mxfp4_checkpoint_is_named(model_copy, capsys):
    folder = model_copy("gpt_oss")
    tensors = load_file(_weights(folder))
    tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"] = tensors.pop("model.layers.0.mlp.experts.gate_up_proj")
    save_file(tensors, _weights(folder), metadata={"format": "pt"})
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "MXFP4-quantised" in err


def test_invalid_transformers_config_value(model_copy, capsys):
    folder = model_copy("deepseek_v3")
    _edit_config(folder, n_group=3)  # 8 experts do not split into 3 groups
    assert main(["inspect", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "n_group=3 does not divide the 8 experts" in err


@pytest.mark.parametrize("argv, message", [
    (["plan", "--budget", "0", "--out", "p.json"], "--budget: 0 is outside (0, 1]"),
    (["plan", "--budget", "half", "--out", "p.json"], "'half' is not a number"),
    (["plan", "--sum-k", "-3", "--out", "p.json"], "--sum-k: -3 must be at least 1"),
    (["plan", "--budget", "0.5", "--sum-k", "4", "--out", "p.json"], "not allowed with argument"),
    (["plan", "--out", "p.json"], "one of the arguments --budget --sum-k is required"),
    (["export", "--target", "tflite", "--out", "m.onnx"], "invalid choice: 'tflite'"),
    (["inspect", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["profile"], "the following arguments are required: --out"),
])
def test_bad_command_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []
