"""The complex-view pass: shape ops on complex tensors become translatable, values unchanged."""

import numpy as np
import onnxruntime
import pytest
import torch

from moe_compile.export.complex_views import make_complex_views_exportable


class ComplexRotary(torch.nn.Module):
    """DeepSeek-V2's rotary embedding in miniature: complex frequencies, unsqueezed, multiplied."""

    def __init__(self, unsqueeze_dim: int):
        super().__init__()
        self.unsqueeze_dim = unsqueeze_dim

    def forward(self, x, angles):  # x [B, H, S, D], angles [B, S, D/2]
        freqs = torch.polar(torch.ones_like(angles), angles) * 0.5
        freqs = freqs.unsqueeze(self.unsqueeze_dim)
        if self.unsqueeze_dim == -1:  # [B, S, D/2, 1] -> [B, 1, S, D/2]
            freqs = freqs.squeeze(-1).unsqueeze(1)
        rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs
        return torch.view_as_real(rotated).flatten(3)


@pytest.mark.parametrize("unsqueeze_dim", [1, -1])
def test_complex_unsqueeze_exports_and_keeps_its_values(unsqueeze_dim, tmp_path):
    module = ComplexRotary(unsqueeze_dim)
    x, angles = torch.randn(2, 3, 5, 8), torch.randn(2, 5, 4)
    expected = module(x, angles)
    program = torch.export.export(module, (x, angles), strict=False)
    assert make_complex_views_exportable(program) == 1 + (unsqueeze_dim == -1)
    assert not any(node.target == torch.ops.aten.unsqueeze.default and node.args[0].meta["val"].is_complex()
                   for node in program.graph.nodes if node.op == "call_function")
    torch.testing.assert_close(program.module()(x, angles), expected, rtol=0, atol=0)

    onnx_program = torch.onnx.export(program, dynamo=True, input_names=["x", "angles"], verbose=False)
    onnx_program.save(str(tmp_path / "rotary.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "rotary.onnx"), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"x": x.numpy(), "angles": angles.numpy()})
    np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_program_without_complex_values_is_left_alone():
    program = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(2, 4),), strict=False)
    before = str(program.graph)
    assert make_complex_views_exportable(program) == 0
    assert str(program.graph) == before
