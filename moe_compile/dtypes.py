"""The one table of element types: each row names one type in every vocabulary the package
speaks (torch, our short names, ONNX, safetensors, Triton Inference Server, TensorRT and its
plugin API, Triton's language, ONNX Runtime, numpy), so no module keeps a map of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "bf16")  # what export, build, validate and bench take (--dtype, --precision)


@dataclass(frozen=True)
class ElementType:
    torch_name: str  # torch.<name>
    short: str  # ours and Triton's language: fp32, i32, ...
    onnx: int  # onnx.TensorProto.DataType
    safetensors: str  # the header's dtype
    triton_server: str | None  # config.pbtxt's TYPE_* (none for fp8)
    tensorrt: str  # tensorrt.DataType member
    tensorrt_plugin: str  # tensorrt.plugin's type names
    ort: str | None  # ONNX Runtime's type string
    numpy: str | None  # numpy dtype name (none for bf16 and fp8)
    itemsize: int

    @property
    def torch(self):
        import torch

        return getattr(torch, self.torch_name)


ELEMENT_TYPES = (
    ElementType("float64", "fp64", 11, "F64", "TYPE_FP64", "DOUBLE", "FP64", "tensor(double)", "float64", 8),
    ElementType("float32", "fp32", 1, "F32", "TYPE_FP32", "FLOAT", "FP32", "tensor(float)", "float32", 4),
    ElementType("float16", "fp16", 10, "F16", "TYPE_FP16", "HALF", "FP16", "tensor(float16)", "float16", 2),
    ElementType("bfloat16", "bf16", 16, "BF16", "TYPE_BF16", "BF16", "BF16", "tensor(bfloat16)", None, 2),
    ElementType("float8_e4m3fn", "fp8e4nv", 17, "F8_E4M3", None, "FP8", "FP8", None, None, 1),
    ElementType("float8_e5m2", "fp8e5", 19, "F8_E5M2", None, "FP8", "FP8", None, None, 1),
    ElementType("int64", "i64", 7, "I64", "TYPE_INT64", "INT64", "INT64", "tensor(int64)", "int64", 8),
    ElementType("int32", "i32", 6, "I32", "TYPE_INT32", "INT32", "INT32", "tensor(int32)", "int32", 4),
    ElementType("int16", "i16", 5, "I16", "TYPE_INT16", "INT16", "INT16", "tensor(int16)", "int16", 2),
    ElementType("int8", "i8", 3, "I8", "TYPE_INT8", "INT8", "INT8", "tensor(int8)", "int8", 1),
    ElementType("uint8", "u8", 2, "U8", "TYPE_UINT8", "UINT8", "UINT8", "tensor(uint8)", "uint8", 1),
    ElementType("bool", "i1", 9, "BOOL", "TYPE_BOOL", "BOOL", "BOOL", "tensor(bool)", "bool", 1),
)


def element_type(**column) -> ElementType | None:
    """The row whose one given column has the given value, e.g. element_type(onnx=10); None if none."""
    ((name, value),) = column.items()
    if name == "torch":
        name, value = "torch_name", str(value).removeprefix("torch.")
    return next((row for row in ELEMENT_TYPES if getattr(row, name) == value), None)


def torch_dtype(short: str):
    """fp32 / fp16 / bf16 (and the rest of the short names) -> the torch dtype."""
    return element_type(short=short).torch
