"""Every malformed input ends with one line on stderr, exit code 2, no traceback, no output."""

import importlib.util
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


def _index_pointing_to(folder: Path, name: str) -> None:
    """The weights moved to `name` (a real file there) and an index that names it."""
    target = folder / name
    shutil.move(_weights(folder), target)
    weight_map = {key: name for key in load_file(target)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


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
    "index names a shard outside the folder": (
        lambda f: _index_pointing_to(f, f"../{f.name}-outside.safetensors"),
        "names shard '../broken-qwen2_moe-outside.safetensors', which leads out of the folder through '..'"),
    "index names a shard by absolute path": (
        lambda f: _index_pointing_to(f, str(f.parent / "outside.safetensors")), "an absolute path"),
    "index names a shard by a number": (
        lambda f: (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": 3}})),
        "names shard 3, which is not a file name"),
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
    (["plan", "--budget", "0.5", "--target-ms", "2", "--out", "p.json"], "not allowed with argument"),
    (["export", "--target", "tflite", "--out", "m.onnx"], "invalid choice: 'tflite'"),
    (["inspect", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["profile"], "the following arguments are required: --out"),
    (["profile", "--batch", "0", "--out", "p.json"], "--batch: 0 must be at least 1"),
    (["profile", "--seq-len", "long", "--out", "p.json"], "--seq-len: 'long' is not a whole number"),
    (["plan", "--budget", "0.5", "--solver", "simplex", "--out", "p.json"], "invalid choice: 'simplex'"),
    (["plan", "--objective", "latency", "--target-ms", "1", "--tokens", "0", "--out", "p.json"],
     "--tokens: 0 must be at least 1"),
    (["plan", "--budget", "0.5", "--cost-model", "roofline-a100", "--out", "p.json"], "invalid choice: 'roofline-a100'"),
    (["export", "--dtype", "fp8", "--out", "m.onnx"], "invalid choice: 'fp8'"),
    (["demo", "--budget", "1.5", "--out", "m.onnx"], "--budget: 1.5 is outside (0, 1]"),
    (["demo", "--budget", "0.5", "--plan", "p.json", "--out", "m.onnx"], "not allowed with argument"),
    (["demo", "--precision", "fp4", "--out", "m.onnx"], "invalid choice: 'fp4'"),
    (["demo", "--out", "model.txt"], "--out model.txt: give model.onnx (ONNX) or engine.plan (TensorRT)"),
    (["validate", "demo"], "validate: give --onnx model.onnx"),
])
def test_bad_command_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def demo_plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    assert main(["plan", "demo", "--budget", "0.75", "--batch", "1", "--seq-len", "8", "--draws", "1",
                 "--out", str(path)]) == 0
    return json.loads(path.read_text())


def _plan_edit(**changes):
    def edit(plan):
        plan.update(changes)
        return plan
    return edit


def _layer_edit(position, **changes):
    def edit(plan):
        plan["layers"][position].update(changes)
        return plan
    return edit


BROKEN_PLANS = {
    "not json": (lambda plan: "{", "is not valid JSON"),
    "not an object": (lambda plan: [1], "must hold a JSON object"),
    "wrong schema": (_plan_edit(schema="something/else"), "is not a moe-compile plan"),
    "no fingerprint": (_plan_edit(model=None), "has no model fingerprint"),
    "another model": (_plan_edit(model={"model_type": "olmoe", "sha256": "0" * 64}),
                      "was made for another model (olmoe, sha256 000000000000), not"),
    "no layers": (_plan_edit(layers="all"), "malformed layers"),
    "missing a layer": (lambda plan: {**plan, "layers": plan["layers"][:-1]}, "but the model's MoE layers are"),
    "top-k zero": (_layer_edit(3, top_k=0), "layer 3: top_k=0 is outside 1..16"),
    "top-k above E": (_layer_edit(5, top_k=17), "layer 5: top_k=17 is outside 1..16"),
    "top-k not a number": (_layer_edit(1, top_k="4"), "layer 1 has top_k '4', not a whole number"),
    "index infinite": (lambda plan: json.dumps(plan).replace('"index": 0,', '"index": Infinity,'),
                       "malformed layers (index inf is not a whole number)"),
    "index not whole": (_layer_edit(2, index=2.5), "malformed layers (index 2.5 is not a whole number)"),
    "layer twice": (_layer_edit(2, index=3), "malformed layers (layer 3 is listed twice)"),
    "layer not an object": (lambda plan: {**plan, "layers": [3, *plan["layers"][1:]]}, "malformed layers (expected a list"),
    "nested too deep": (lambda plan: "[" * 100_000, "is not valid JSON (maximum recursion depth exceeded"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_PLANS))
def test_broken_plan_file(case, demo_plan, tmp_path, capsys):
    edit, message = BROKEN_PLANS[case]
    broken = edit(json.loads(json.dumps(demo_plan)))
    path = tmp_path / "plan.json"
    path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
    assert main(["inspect", "demo", "--plan", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_missing_plan_file(capsys, tmp_path):
    assert main(["inspect", "--plan", str(tmp_path / "nope.json")]) == 2
    assert "plan '" in capsys.readouterr().err


FAST_PROFILE = ["--batch", "1", "--seq-len", "8", "--draws", "1"]


@pytest.mark.parametrize("argv, message", [
    (["--sum-k", "7"], "the budget (7 experts) is below the least possible cost (8 experts, every layer at k=1)"),
    (["--sum-k", "33"], "the budget (33 experts) is above the cost at the base top-k (32 experts)"),
    (["--budget", "0.2", "--k-min", "2"], "the budget (6 experts) is below the least possible cost (16 experts"),
    (["--budget", "0.5", "--k-min", "5"], "--k-min 5 is above the smallest base top-k (4)"),
    (["--target-ms", "3"], "--target-ms goes with --objective latency"),
    (["--sum-k", "9", "--objective", "latency"], "--sum-k goes with --objective sum-k"),
    ([], "give --budget FRACTION, --sum-k N or (with --objective latency) --target-ms MS"),
    (["--budget", "0.5", "--scale", "0"], "--scale: 0 must be positive"),
    (["--budget", "0.5", "--temperature", "0"], "--temperature: 0 must be positive"),
    (["--budget", "0.5", "--temperature", "inf"], "--temperature: inf must be positive and finite"),
])
def test_bad_plan_request(argv, message, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "demo", *argv, *FAST_PROFILE, "--out", str(out)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []  # no plan, no plot


def test_profile_of_another_model_is_refused(tiny_model_dirs, tmp_path, capsys):
    profile = tmp_path / "profile.json"
    assert main(["profile", str(tiny_model_dirs["olmoe"]), *FAST_PROFILE, "--out", str(profile)]) == 0
    capsys.readouterr()
    assert main(["plan", "demo", "--budget", "0.5", "--profile", str(profile), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "was made for another model (olmoe" in err
    assert not (tmp_path / "p.json").exists()


def _expect_refusal(argv, message, folder, capsys):
    """One line on stderr naming the problem, exit code 2, nothing on stdout, `folder` unchanged."""
    before = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("moe-compile: error: "), err
    assert message in err, err
    assert sorted(p.name for p in folder.iterdir()) == before


def _retensor(folder: Path, name: str, change) -> None:
    tensors = load_file(_weights(folder))
    tensors[name] = change(tensors[name]).contiguous()
    save_file(tensors, _weights(folder), metadata={"format": "pt"})


BROKEN_WEIGHTS = {  # found when a layer's weights are read, not from the headers
    "router with too few experts": (
        lambda f: _retensor(f, "model.layers.0.mlp.gate.weight", lambda t: t[:-1]),
        "MoE layer 0: router_weight has shape [7, 32], expected [8, 32] from config.json"),
    "router of the wrong width": (
        lambda f: _retensor(f, "model.layers.0.mlp.gate.weight", lambda t: t[:, :-1]),
        "MoE layer 0: router_weight has shape [8, 31], expected [8, 32] from config.json"),
    "expert of the wrong shape": (
        lambda f: _retensor(f, "model.layers.2.mlp.experts.3.down_proj.weight", lambda t: t[:, :-1]),
        "MoE layer 2: the checkpoint's expert tensors do not fit together"),
    "config.json is a folder": (
        lambda f: ((f / "config.json").unlink(), (f / "config.json").mkdir()), "has no config.json"),
    "model_type not a string": (lambda f: _edit_config(f, model_type=["qwen2_moe"]),
                                "model_type ['qwen2_moe'] is not supported"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_WEIGHTS))
def test_broken_weights_refused_by_profile(case, model_copy, tmp_path, capsys):
    folder = model_copy()
    breaker, message = BROKEN_WEIGHTS[case]
    breaker(folder)
    out = tmp_path / "out"
    out.mkdir()
    _expect_refusal(["profile", str(folder), *FAST_PROFILE, "--out", str(out / "profile.json")], message, out, capsys)


def _onnx_file(path: Path, **metadata) -> Path:
    """A valid ONNX file that is not a decoder (one Identity), with the given metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def _demo_metadata(**changes) -> dict:
    from moe_compile.compiler.loader import load_moe_model

    ir = load_moe_model("demo")
    metadata = {"moe_compile.model_sha256": ir.fingerprint["sha256"],
                "moe_compile.weights_sha256": ir.fingerprint["weights_sha256"], "moe_compile.dtype": "fp32",
                "moe_compile.target": "onnx",
                "moe_compile.top_k": json.dumps({str(spec.index): spec.base_top_k for spec in ir.layers})}
    return {key: value for key, value in {**metadata, **changes}.items() if value is not None}


BROKEN_ONNX = {
    "missing": (lambda p: p, "does not exist"),
    "a folder": (lambda p: (p.mkdir(), p)[1], "is a folder"),
    "not protobuf": (lambda p: (p.write_bytes(os.urandom(512)), p)[1], "is not an ONNX model"),
    "truncated": (lambda p: (_onnx_file(p, **_demo_metadata()), p.write_bytes(p.read_bytes()[:40]), p)[2],
                  "is not an ONNX model"),
    "no moe_compile metadata": (lambda p: _onnx_file(p), "was not exported by moe-compile"),
    "another model's": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.model_sha256": "0" * 64})),
                        "was exported from another model"),
    "top_k not JSON": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.top_k": "{"})),
                       "malformed moe_compile metadata (moe_compile.top_k is not JSON)"),
    "top_k not a mapping": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.top_k": "[1, 2]"})),
                            "malformed moe_compile metadata (moe_compile.top_k is not a {layer: k} object)"),
    "no dtype": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.dtype": None})),
                 "moe_compile.dtype is None, not one of fp32, fp16, bf16"),
    "unknown dtype": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.dtype": "fp8"})),
                      "moe_compile.dtype is 'fp8'"),
    "unknown target": (lambda p: _onnx_file(p, **_demo_metadata(**{"moe_compile.target": "tflite"})),
                       "moe_compile.target is 'tflite'"),
    "not a decoder": (lambda p: _onnx_file(p, **_demo_metadata()),
                      "is not a decoder exported by moe-compile for this model (it lacks input_ids"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_ONNX))
def test_broken_onnx_file_refused_by_validate(case, tmp_path, capsys):
    make, message = BROKEN_ONNX[case]
    path = make(tmp_path / "model.onnx")
    _expect_refusal(["validate", "demo", "--onnx", str(path)], message, tmp_path, capsys)


@pytest.mark.parametrize("command", [["profile", *FAST_PROFILE], ["plan", "--budget", "0.5", *FAST_PROFILE],
                                     ["export"], ["compile"]], ids=["profile", "plan", "export", "compile"])
@pytest.mark.parametrize("where", ["folder", "below a file"])
def test_unwritable_out_is_refused_before_any_work(command, where, tmp_path, capsys):
    suffix = ".onnx" if command[0] in ("export", "compile") else ".json"
    if where == "folder":
        out, message = tmp_path / f"out{suffix}", "is a folder"
        out.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        out, message = tmp_path / "file" / f"out{suffix}", "cannot write --out"
    _expect_refusal([command[0], "demo", *command[1:], "--out", str(out)], message, tmp_path, capsys)


@pytest.mark.parametrize("content, message", [
    ("{", "is not valid JSON"),
    (json.dumps({"schema": "moe-compile/plan/v1"}), "is not a moe-compile profile"),
    (json.dumps([1]), "must hold a JSON object"),
], ids=["not json", "a plan, not a profile", "not an object"])
def test_broken_profile_file_refused_by_plan(content, message, tmp_path, capsys):
    (tmp_path / "profile.json").write_text(content)
    _expect_refusal(["plan", "demo", "--budget", "0.5", "--profile", str(tmp_path / "profile.json"),
                     "--out", str(tmp_path / "plan.json")], message, tmp_path, capsys)


def _image_onnx(path: Path) -> Path:
    """A valid ONNX file with a dynamic axis that is no decoder axis (an image height)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "height", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "height", 8])])
    onnx.save(helper.make_model(graph), path)
    return path


def _blocked_out(folder: Path) -> Path:
    (folder / "file").write_text("x")
    return folder / "file" / "engine.plan"


BAD_BUILDS = {  # refused before TensorRT is needed, so the same on every machine
    "missing": (lambda t: (t / "nope.onnx", []), "ONNX file '{t}/nope.onnx' does not exist"),
    "a folder": (lambda t: ((t / "dir.onnx").mkdir() or t / "dir.onnx", []), "is a folder"),
    "not ONNX": (lambda t: ((t / "junk.onnx").write_bytes(os.urandom(512)) and t / "junk.onnx", []),
                 "junk.onnx is not an ONNX model"),
    "out is a folder": (lambda t: (_onnx_file(t / "m.onnx"), ["--out", str(t)]), "is a folder; give a file name"),
    "out below a file": (lambda t: (_onnx_file(t / "m.onnx"), ["--out", str(_blocked_out(t))]), "cannot write --out"),
    "max-batch zero": (lambda t: (_onnx_file(t / "m.onnx"), ["--max-batch", "0"]), "--max-batch: 0 must be at least 1"),
    "max-seq not a number": (lambda t: (_onnx_file(t / "m.onnx"), ["--max-seq", "long"]),
                             "'long' is not a whole number"),
    "precision mismatch": (lambda t: (_onnx_file(t / "m.onnx"), ["--precision", "bf16"]),
                           "--precision bf16: {t}/m.onnx holds fp32 tensors"),
    "unknown precision": (lambda t: (_onnx_file(t / "m.onnx"), ["--precision", "int8"]), "invalid choice: 'int8'"),
    "axis without a range": (lambda t: (_image_onnx(t / "image.onnx"), []),
                             "input 'x' axis 2 is dynamic ('height') but not a batch, sequence or past axis"),
    "timing cache is a folder": (lambda t: (_onnx_file(t / "m.onnx"), ["--timing-cache", str(t)]),
                                 "--timing-cache {t} is a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUILDS))
def test_bad_build_is_refused_before_tensorrt(case, tmp_path, capsys):
    make, message = BAD_BUILDS[case]
    onnx_path, extra = make(tmp_path)
    argv = ["build", str(onnx_path), "--out", str(tmp_path / "engine.plan"), *extra]
    if "--out" in extra:
        argv = ["build", str(onnx_path), *extra]
    _expect_refusal(argv, message.format(t=tmp_path), tmp_path, capsys)


NO_TENSORRT = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")


@NO_TENSORRT
@pytest.mark.parametrize("extra", [[], ["--budget", "0.5"], ["--precision", "bf16"]], ids=["base", "budget", "bf16"])
def test_pipeline_to_an_engine_without_tensorrt_writes_nothing(extra, tmp_path, capsys):
    _expect_refusal(["demo", "--out", str(tmp_path / "engine.plan"), *extra],
                    "--out engine.plan (a TensorRT engine) needs TensorRT, which is not installed", tmp_path, capsys)


@NO_TENSORRT
def test_build_of_a_good_file_without_tensorrt_is_one_line(tmp_path, capsys):
    onnx_path = _onnx_file(tmp_path / "m.onnx")
    _expect_refusal(["build", str(onnx_path), "--out", str(tmp_path / "engine.plan")],
                    "build needs TensorRT, which is not installed: pip install 'moe-compile[tensorrt]'",
                    tmp_path, capsys)


def test_pipeline_refuses_another_target_for_an_engine(tmp_path, capsys):
    _expect_refusal(["demo", "--target", "onnx", "--out", str(tmp_path / "engine.plan")],
                    "--target onnx: an engine is built from the tensorrt target", tmp_path, capsys)
