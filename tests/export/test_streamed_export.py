"""Streamed export (weights written tensor by tensor from safetensors) against the in-memory
export it replaced, and a sharded checkpoint's faults: one line, exit 2, nothing left behind."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from moe_compile.cli import main
from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.export.exporter import export_onnx


def _graph_and_weights(path):
    model = onnx.load(str(path))  # external data loaded from beside the file
    nodes = [(n.domain, n.op_type, list(n.input), list(n.output), [str(a) for a in n.attribute])
             for n in model.graph.node]
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    metadata = {p.key: p.value for p in model.metadata_props}
    return nodes, weights, metadata, [str(v) for v in (*model.graph.input, *model.graph.output)]


@pytest.mark.parametrize("model_type, target", [
    pytest.param("qwen2_moe", "onnxruntime", id="qwen2_moe-onnxruntime"),
    *(pytest.param(m, t, id=f"{m}-{t}", marks=pytest.mark.slow)
      for m in ("qwen3_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v3", "gpt_oss")
      for t in ("onnx", "onnxruntime")),
    pytest.param("qwen2_moe", "onnx", id="qwen2_moe-onnx", marks=pytest.mark.slow),
])
def test_streamed_export_is_the_in_memory_export(model_type, target, tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs[model_type])
    export_onnx(ir, tmp_path / "streamed" / "model.onnx", target=target)
    export_onnx(ir, tmp_path / "in_memory" / "model.onnx", target=target, streamed=False)
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == ["model.onnx", "model.onnx.data"]
    nodes, weights, metadata, signature = _graph_and_weights(tmp_path / "streamed" / "model.onnx")
    nodes_ref, weights_ref, metadata_ref, signature_ref = _graph_and_weights(tmp_path / "in_memory" / "model.onnx")
    assert nodes == nodes_ref and metadata == metadata_ref and signature == signature_ref
    assert sorted(weights) == sorted(weights_ref)
    for name, value in weights.items():
        assert value.dtype == weights_ref[name].dtype and value.shape == weights_ref[name].shape, name
        assert np.array_equal(value, weights_ref[name], equal_nan=True), name  # NaN: the poison constant


def _sharded(folder):
    """The tiny model's single model.safetensors split in two shards with an index."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        save_file({name: tensors[name] for name in members}, folder / shard, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, members in shards.items() for name in members}}))
    return folder


def _truncate_data(path):
    path.write_bytes(path.read_bytes()[:-64])  # header intact, the last tensor's bytes short


def _name_twice(path):
    first = load_file(path.parent / "model-00001-of-00002.safetensors")
    name = sorted(first)[0]
    second = load_file(path)
    second[name] = first[name]
    save_file(second, path, metadata={"format": "pt"})


SHARD_FAULTS = {
    "missing shard": (lambda p: p.unlink(), "names shard 'model-00002-of-00002.safetensors', which is not in"),
    "truncated shard": (_truncate_data, "model-00002-of-00002.safetensors is not a readable safetensors file"),
    "tensor in two shards": (_name_twice, "is in both model-00001-of-00002.safetensors and model-00002-of-00002"),
}


@pytest.mark.parametrize("case", sorted(SHARD_FAULTS))
def test_shard_fault_is_one_line_and_leaves_nothing(case, tiny_model_dirs, tmp_path, capsys):
    folder = _sharded(shutil.copytree(tiny_model_dirs["qwen2_moe"], tmp_path / "model"))
    breaker, message = SHARD_FAULTS[case]
    breaker(folder / "model-00002-of-00002.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["export", str(folder), "--target", "onnxruntime", "--out", str(out_dir / "model.onnx")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("failing_read", [pytest.param(5, id="while optimizing", marks=pytest.mark.slow),
                                          pytest.param(150, id="while writing")])
def test_a_read_failing_mid_export_leaves_no_file(failing_read, tiny_model_dirs, tmp_path, monkeypatch):
    """The checkpoint breaks after the trace, while the optimizer folds small weights or while
    weights are written: the error itself comes out, the staged model.onnx.data is removed and
    nothing is renamed into place. (The tiny qwen2_moe: the optimizer reads 142 tensors, the
    writer 91 more.)"""
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    read = SafetensorsCheckpoint.read
    calls = []

    def fails_once(self, name):
        calls.append(name)
        if len(calls) == failing_read:
            raise InvalidInput(f"cannot read tensor '{name}' (injected)")
        return read(self, name)

    monkeypatch.setattr(SafetensorsCheckpoint, "read", fails_once)
    with pytest.raises(InvalidInput, match="injected"):
        export_onnx(ir, tmp_path / "model.onnx", target="onnxruntime")
    assert len(calls) == failing_read and list(tmp_path.iterdir()) == []
