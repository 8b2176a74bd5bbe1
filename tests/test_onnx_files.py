"""moe_compile/onnx_files.py, the one reader of ONNX files and their external data."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from moe_compile.errors import InvalidInput
from moe_compile.onnx_files import external_data_files, read_onnx_graph, read_onnx_model


def _save_with_external_data(folder, location="weights.bin"):
    """y = x @ W with W (64 x 64 floats, 16 KiB) stored outside the proto in `location`."""
    weight = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(helper.make_model(graph), folder / "model.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return folder / "model.onnx"


def test_a_file_moved_with_its_data_reads_back_whole(tmp_path):
    path = _save_with_external_data(tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / "model.onnx"
    assert external_data_files(read_onnx_graph(moved), moved) == ["weights.bin"]
    weight = numpy_helper.to_array(read_onnx_model(moved).graph.initializer[0])
    assert weight.shape == (64, 64) and weight[1, 0] == 64 and not path.exists()


@pytest.mark.parametrize("fault, message", [
    ("missing data", "its weights file weights.bin is missing"),
    ("truncated data", "cannot read its weights"),
    ("not onnx", "is not an ONNX model"),
    ("a folder", "is a folder"),
    ("no file", "does not exist"),
])
def test_a_bad_file_is_one_line(fault, message, tmp_path):
    path = _save_with_external_data(tmp_path / "m")
    if fault == "missing data":
        (tmp_path / "m" / "weights.bin").unlink()
    elif fault == "truncated data":
        data = tmp_path / "m" / "weights.bin"
        data.write_bytes(data.read_bytes()[:100])
    elif fault == "not onnx":
        path.write_bytes(b"\x12\xff" * 64)
    elif fault == "a folder":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    with pytest.raises(InvalidInput, match=message) as error:
        read_onnx_model(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/outside.bin", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused_before_reading(location, tmp_path):
    path = _save_with_external_data(tmp_path / "m", location="weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))
    with pytest.raises(InvalidInput, match="is outside the ONNX file's folder"):
        read_onnx_graph(path)
