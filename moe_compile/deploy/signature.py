"""What a Triton config needs to know about a model file: its inputs and outputs (name, Triton
data type, dims with -1 for a dynamic axis), read from an ONNX graph or a TensorRT engine.

Reading an engine needs TensorRT, imported only when a .plan is given; ONNX is read without
its weights (`load_external_data=False`), so a model of any size is inspected in a moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moe_compile.dtypes import ELEMENT_TYPES
from moe_compile.errors import InvalidInput
from moe_compile.onnx_files import external_data_files, read_onnx_graph

# ONNX TensorProto element type / tensorrt.DataType member name -> Triton data type (model_config.proto's
# names), from the one table (moe_compile/dtypes.py).
_ONNX_TO_TRITON = {row.onnx: row.triton_server for row in ELEMENT_TYPES if row.triton_server}
_TENSORRT_TO_TRITON = {row.tensorrt: row.triton_server for row in ELEMENT_TYPES if row.triton_server}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # a Triton TYPE_* name
    dims: tuple[int, ...]  # -1 where the axis is dynamic, batch axis included


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict  # moe_compile.* metadata of an ONNX file (empty for an engine)
    external_data: tuple[str, ...] = ()  # files beside an ONNX model that hold its weights

    def output(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)


def onnx_signature(path: Path) -> ModelSignature:
    model = read_onnx_graph(path)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _ONNX_TO_TRITON:
            raise InvalidInput(f"{path}: tensor '{value.name}' has ONNX element type {tensor.elem_type}, "
                               "which Triton has no type for")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(value.name, _ONNX_TO_TRITON[tensor.elem_type], dims)

    return ModelSignature(inputs=tuple(spec(v) for v in model.graph.input if v.name not in initializers),
                          outputs=tuple(spec(v) for v in model.graph.output),
                          metadata={prop.key: prop.value for prop in model.metadata_props},
                          external_data=tuple(external_data_files(model, path)))


def engine_signature(path: Path) -> ModelSignature:
    """The I/O tensors of a serialized TensorRT engine (TensorRT 10's named-tensor API)."""
    from moe_compile.validate.runners import load_engine

    engine = load_engine(path)  # checks TensorRT and a GPU first
    import tensorrt as trt

    inputs, outputs = [], []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = engine.get_tensor_dtype(name).name
        if dtype not in _TENSORRT_TO_TRITON:
            raise InvalidInput(f"{path}: tensor '{name}' has TensorRT type {dtype}, which Triton has no type for")
        spec = TensorSpec(name, _TENSORRT_TO_TRITON[dtype], tuple(engine.get_tensor_shape(name)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return ModelSignature(tuple(inputs), tuple(outputs), metadata={})
