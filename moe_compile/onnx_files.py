"""Reading ONNX files, the one place that does: the graph alone (headers, metadata, I/O: a
moment for a model of any size), the graph with its weights, and the external-data files a
graph names. Every failure is one `InvalidInput` line naming the file.

External data: a tensor stored outside the proto names its file by a `location` relative to
the ONNX file's folder. A location that leaves that folder (an absolute path, `..`) is refused
before anything is read, as the model folder's shard names are (compiler/checkpoint.py). The
onnx library itself refuses a data file that is a symlink; that too is one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from moe_compile.errors import InvalidInput, one_line


def read_onnx_graph(path: str | Path):
    """The ONNX model without its external weights (onnx.ModelProto)."""
    import onnx

    path = _existing_file(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInput(f"{path} is not an ONNX model ({one_line(exc)})") from None
    external_data_files(model, path)  # refuses a location outside the folder
    return model


def read_onnx_model(path: str | Path):
    """The ONNX model with every external weight loaded into it."""
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    model = read_onnx_graph(path)
    missing = [name for name in external_data_files(model, path) if not (path.parent / name).is_file()]
    if missing:
        raise InvalidInput(f"{path}: its weights file {missing[0]} is missing (keep it beside the ONNX file)")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # a truncated external-data file
        raise InvalidInput(f"{path}: cannot read its weights ({one_line(exc)})") from None
    return model


def external_data_files(model, path: str | Path) -> list[str]:
    """The external-data files `model` (read from `path`) names, sorted, each inside its folder."""
    names = sorted({entry.value for tensor in _tensors(model) if tensor.data_location == tensor.EXTERNAL
                    for entry in tensor.external_data if entry.key == "location"})
    for name in names:
        if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == "..":
            raise InvalidInput(f"{path}: external data location '{name}' is outside the ONNX file's folder")
    return names


def _tensors(model):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"ONNX file '{path}' is a folder")
    if not path.is_file():
        raise InvalidInput(f"ONNX file '{path}' does not exist")
    return path
