"""`moe-compile deploy`: the repository's files and configs (parsed back with tritonclient's
model_config_pb2), per backend, and every bad input: one line, exit 2, nothing written."""

import json
import shutil

import onnx
import pytest
from served import MODEL

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model
from moe_compile.deploy.config import config_text, decoder_config, read_config
from moe_compile.deploy.repository import tensorrt_readme
from moe_compile.deploy.signature import onnx_signature
from moe_compile.export.exporter import export_onnx

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


@pytest.fixture(scope="module")
def tensorrt_onnx(tiny_model_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(load_moe_model(tiny_model_dirs["qwen2_moe"]), path, target="tensorrt")
    return path


def _deploy(capsys, *argv):
    code = main(["deploy", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _io(config):
    return [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input], \
           [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output]


def _expected_io(onnx_path):
    """The ONNX graph's own I/O, batch axis dropped (it is max_batch_size's)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}

    def row(value):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        return (value.name, types[value.type.tensor_type.elem_type], dims[1:])

    return [row(v) for v in model.graph.input], [row(v) for v in model.graph.output]


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
def test_repository_is_complete_and_parses(backend, tiny_onnx, tmp_path, capsys):
    repo = tmp_path / "repo"
    code, out, err = _deploy(capsys, tiny_onnx, "--repo", repo, "--name", MODEL, "--backend", backend,
                             "--max-batch", 4, "--instances", 2, "--json")
    assert code == 0 and err == ""
    decoder_files = ["tiny/1/model.onnx", "tiny/1/model.onnx.data", *(["tiny/1/model.py"] if backend == "python" else [])]
    assert json.loads(out)["files"] == sorted([*decoder_files, "tiny/config.pbtxt", "tiny_generate/1/model.py",
                                               "tiny_generate/config.pbtxt"])
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == json.loads(out)["files"]
    assert (repo / "tiny/1/model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert (repo / "tiny/1/model.py").exists() == (backend == "python")

    decoder = read_config(repo / "tiny" / "config.pbtxt")
    assert decoder.name == MODEL and decoder.max_batch_size == 4 and decoder.HasField("dynamic_batching")
    if backend == "python":
        assert (decoder.backend, decoder.platform) == ("python", "")
        assert decoder.parameters["onnx_file"].string_value == "model.onnx"
        assert decoder.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    else:
        assert (decoder.platform, decoder.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
    assert decoder.instance_group[0].count == 2
    assert _io(decoder) == _expected_io(tiny_onnx)

    generate = read_config(repo / "tiny_generate" / "config.pbtxt")
    assert (generate.name, generate.backend, generate.max_batch_size) == ("tiny_generate", "python", 0)
    assert _io(generate) == ([("input_ids", "TYPE_INT64", [-1, -1]), ("max_new_tokens", "TYPE_INT32", [1])],
                             [("tokens", "TYPE_INT64", [-1, -1]), ("logits", "TYPE_FP32", [-1, -1, 96])])
    assert generate.parameters["decoder_model"].string_value == MODEL
    cache = json.loads(generate.parameters["cache"].string_value)
    assert [(c["past"], c["present"]) for c in cache[:2]] == [("past_key_values.0.key", "present.0.key"),
                                                             ("past_key_values.0.value", "present.0.value")]
    assert len(cache) == 6 and all(c["dims"] == [2, -1, 8] and c["data_type"] == "TYPE_FP32" for c in cache)


def _with_external_data(tiny_onnx, folder):
    source = folder / "model.onnx"
    folder.mkdir(exist_ok=True)
    onnx.save_model(onnx.load(str(tiny_onnx)), source, save_as_external_data=True, location="model.onnx.data",
                    size_threshold=1024)  # as the exporter writes it
    return source


def _without_its_data(tiny_onnx, folder):
    source = _with_external_data(tiny_onnx, folder)
    (folder / "model.onnx.data").unlink()
    return source


def test_external_data_is_copied_beside_the_model(tiny_onnx, tmp_path, capsys):
    from moe_compile.validate.runners import OnnxRuntimeRunner

    source = _with_external_data(tiny_onnx, tmp_path / "big")
    code, out, _ = _deploy(capsys, source, "--repo", tmp_path / "repo", "--name", MODEL, "--json")
    assert code == 0 and "tiny/1/model.onnx.data" in json.loads(out)["files"]
    copied = tmp_path / "repo" / "tiny" / "1" / "model.onnx"
    assert (copied.parent / "model.onnx.data").read_bytes() == (source.parent / "model.onnx.data").read_bytes()
    assert OnnxRuntimeRunner(copied).output_names[0] == "logits"


def test_tensorrt_config_from_the_tensorrt_target_onnx(tensorrt_onnx, tmp_path):
    """An engine built from this ONNX has its I/O: the config is made from either the same way."""
    config = decoder_config(MODEL, "tensorrt", onnx_signature(tensorrt_onnx), 8, 1, tensorrt_onnx)
    (tmp_path / "config.pbtxt").write_text(config_text(config))
    parsed = read_config(tmp_path / "config.pbtxt")
    assert (parsed.platform, parsed.default_model_filename, parsed.max_batch_size) == ("tensorrt_plan", "model.plan", 8)
    assert parsed.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and parsed.HasField("dynamic_batching")
    assert _io(parsed) == _expected_io(tensorrt_onnx)
    readme = tensorrt_readme(MODEL)
    assert "moe_compile::GroupedMoERoute" in readme and "no plugin library" in readme


def test_a_model_without_a_dynamic_batch_axis_is_refused(tiny_onnx):
    from moe_compile.deploy.signature import ModelSignature, TensorSpec
    from moe_compile.errors import InvalidInput

    signature = onnx_signature(tiny_onnx)
    static = ModelSignature((TensorSpec("input_ids", "TYPE_INT64", (1, -1)), *signature.inputs[1:]),
                            signature.outputs, {})
    with pytest.raises(InvalidInput, match="tensor 'input_ids' has no dynamic batch axis"):
        decoder_config(MODEL, "tensorrt", static, 8, 1, tiny_onnx)


def test_force_replaces_the_model_and_keeps_the_others(tiny_onnx, tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "other" / "1").mkdir(parents=True)
    assert _deploy(capsys, tiny_onnx, "--repo", repo, "--name", MODEL)[0] == 0
    (repo / "notes.txt").write_text("loose files need --force too")
    code, out, err = _deploy(capsys, tiny_onnx, "--repo", repo, "--name", MODEL, "--backend", "onnxruntime")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        f"moe-compile: error: --repo {repo} already holds model tiny: pass --force to replace it"]
    assert read_config(repo / "tiny" / "config.pbtxt").backend == "python"
    code, _, _ = _deploy(capsys, tiny_onnx, "--repo", repo, "--name", MODEL, "--backend", "onnxruntime", "--force")
    assert code == 0 and read_config(repo / "tiny" / "config.pbtxt").platform == "onnxruntime_onnx"
    assert sorted(p.name for p in repo.iterdir()) == ["notes.txt", "other", "tiny", "tiny_generate"]


def _not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_text("not a model")
    return path


def _not_a_decoder(tmp_path):
    path = tmp_path / "relu.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(onnx.helper.make_model(graph), path)
    return path


def _loose_repo(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "notes.txt").write_text("x")
    return tmp_path / "repo"


def _fake_engine(tmp_path):
    path = tmp_path / "engine.plan"
    path.write_bytes(b"\0" * 64)
    return path


BAD = {
    "missing model file": (lambda t, m: ([t / "nope.onnx"], []), "model file '{t}/nope.onnx' does not exist"),
    "model file is a folder": (lambda t, m: ([t], []), "is a folder"),
    "not ONNX": (lambda t, m: ([_not_onnx(t)], []), "junk.onnx is not an ONNX model"),
    "other suffix": (lambda t, m: ([shutil.copy(m, t / "model.bin")], []), "give a TensorRT engine (.plan)"),
    "weights file missing": (lambda t, m: ([_without_its_data(m, t)], []), "model.onnx.data is missing"),
    "not a decoder": (lambda t, m: ([_not_a_decoder(t)], []), "relu.onnx is not a moe-compile decoder"),
    "name with a slash": (lambda t, m: ([m], ["--name", "a/b"]), "--name 'a/b': use letters"),
    "name with a space": (lambda t, m: ([m], ["--name", "a b"]), "--name 'a b': use letters"),
    "repo is a file": (lambda t, m: ([m], ["--repo", m]), "is a file, not a folder"),
    "repo with loose files": (lambda t, m: ([m], ["--repo", _loose_repo(t)]), "is not a Triton model repository"),
    "max-batch zero": (lambda t, m: ([m], ["--max-batch", "0"]), "--max-batch: 0 must be at least 1"),
    "max-batch not a number": (lambda t, m: ([m], ["--max-batch", "many"]), "'many' is not a whole number"),
    "instances zero": (lambda t, m: ([m], ["--instances", "0"]), "--instances: 0 must be at least 1"),
    "unknown backend": (lambda t, m: ([m], ["--backend", "vllm"]), "invalid choice: 'vllm'"),
    "onnx for tensorrt": (lambda t, m: ([m], ["--backend", "tensorrt"]), "--backend tensorrt serves an engine"),
    "engine for python": (lambda t, m: ([_fake_engine(t)], ["--backend", "python"]), "only --backend tensorrt"),
    "engine without tensorrt": (lambda t, m: ([_fake_engine(t)], []), "TensorRT"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_onnx, tmp_path, capsys):
    make, message = BAD[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    artifact, extra = make(inputs, tiny_onnx)
    argv = [*artifact, "--repo", tmp_path / "repo", "--name", MODEL, *extra]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = _deploy(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("moe-compile: error: ")
    assert message.format(t=inputs) in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_tensorrt_target_onnx_is_refused_by_onnx_runtime_backends(tensorrt_onnx, tmp_path, capsys):
    code, _, err = _deploy(capsys, tensorrt_onnx, "--repo", tmp_path / "repo", "--name", MODEL)
    assert code == 2 and "holds TensorRT plugin nodes" in err and not (tmp_path / "repo").exists()


def test_serve_refuses_a_repo_that_is_not_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["serve", "--repo", str(tmp_path / "file")])
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"moe-compile: error: --repo {tmp_path / 'file'} is not a folder (write one with `moe-compile deploy`)"]
