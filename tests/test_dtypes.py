"""One dtype table (moe_compile/dtypes.py): its rows are right in every vocabulary, and no other
module of the package keeps a dtype map of its own."""

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from moe_compile.dtypes import ELEMENT_TYPES, PRECISIONS, element_type, torch_dtype

PACKAGE = Path(__file__).parents[1] / "moe_compile"


@pytest.mark.parametrize("row", ELEMENT_TYPES, ids=lambda row: row.short)
def test_each_row_names_one_type_in_every_vocabulary(row):
    assert row.torch.itemsize == row.itemsize
    assert onnx.helper.tensor_dtype_to_np_dtype(row.onnx).itemsize == row.itemsize if row.numpy else True
    assert onnx.helper.tensor_dtype_to_string(row.onnx).upper().endswith(
        {"F64": "DOUBLE", "F32": "FLOAT", "F16": "FLOAT16", "BF16": "BFLOAT16", "F8_E4M3": "FLOAT8E4M3FN",
         "F8_E5M2": "FLOAT8E5M2", "BOOL": "BOOL"}.get(row.safetensors, row.safetensors.replace("I", "INT")
                                                      .replace("U", "UINT")))
    if row.numpy:
        assert np.dtype(row.numpy).itemsize == row.itemsize
        assert torch.from_numpy(np.zeros(1, dtype=row.numpy)).dtype == row.torch
    assert element_type(torch=row.torch) is row and element_type(onnx=row.onnx) is row


def test_precisions_are_the_float_types_the_commands_take():
    assert [torch_dtype(name) for name in PRECISIONS] == [torch.float32, torch.float16, torch.bfloat16]


# Names that only a dtype map spells out: each may appear in dtypes.py alone.
_DTYPE_SPELLINGS = re.compile(r'"TYPE_FP16"|"tensor\(float16\)"|"F16"|"HALF"|DataType\.FLOAT16|TensorProto\.FLOAT16'
                              r'|"float16": |torch\.float16: |"fp16": torch')


def test_no_other_module_keeps_a_dtype_map():
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name != "dtypes.py" and _DTYPE_SPELLINGS.search(path.read_text())]
    assert offenders == []
