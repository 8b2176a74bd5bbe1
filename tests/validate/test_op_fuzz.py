"""Parity fuzzing of the GroupedMoE op: every implementation in op_parity.implementations()
(torch.library on CUDA, the Triton kernel, the standard-ONNX and the com.microsoft.MoE lowerings
in ONNX Runtime, and whatever is added there) against the reference, on cases from op_cases.py.

CI runs about 50 derandomised cases; the slow suite (MOE_COMPILE_SLOW=1) 600 random ones.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from op_cases import op_cases

from moe_compile.grouped_moe_op import GroupedMoEAttributes
from moe_compile.validate.op_parity import OnnxRuntimeLowering, OpCase, check_case, implementations, reference_output

FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=50, derandomize=True, **FUZZ)
@given(case=op_cases(max_tokens=64))
def test_every_implementation_matches_the_reference(case):
    assert check_case(case) == {}, case.describe()


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(case=op_cases(max_tokens=1024))
def test_every_implementation_matches_the_reference_slow(case):
    assert check_case(case) == {}, case.describe()


def _case(attrs, logits, tokens=None, hidden=5, inter=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens, experts = logits.shape
    return OpCase(attrs, torch.randn(tokens, hidden, generator=g).to(dtype), logits.to(dtype),
                  (torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5).to(dtype),
                  (torch.randn(experts, hidden, inter, generator=g) / inter**0.5).to(dtype))


@pytest.mark.parametrize("expert_halves", [False, True])
@pytest.mark.parametrize("row", [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [2.0, 2.0, 0.0, 2.0]])
def test_com_microsoft_moe_ties_go_to_the_lower_expert(row, expert_halves):
    """ONNX Runtime's MoE kernel sorts ties to the higher index; the lowering reverses the experts.
    In halves (even intermediate size) its own order would take tied experts' second halves
    first; the lowering chooses the experts outside it."""
    case = _case(GroupedMoEAttributes(top_k=2), torch.tensor([row] * 3), inter=4)
    assert check_case(case, [OnnxRuntimeLowering("onnxruntime", expert_halves)]) == {}


@pytest.mark.parametrize("inter, slices", [(4, 2), (3, 1)])
def test_experts_in_halves_are_twice_as_many_half_experts(inter, slices):
    """The node of a halved lowering holds 2E experts of I/2 channels and takes 2k of them, fc2's
    bias on the first halves only; an odd intermediate size keeps whole experts."""
    from onnx import numpy_helper

    from moe_compile.export.op_model import grouped_moe_onnx

    case = _case(GroupedMoEAttributes(top_k=2), torch.randn(3, 4, generator=torch.Generator().manual_seed(3)), inter=inter)
    weights = {**case.weights(), "b_gate_up": torch.randn(4, 2 * inter), "b_down": torch.randn(4, 5)}
    model = grouped_moe_onnx("onnxruntime", case.attrs, tuple(case.hidden.shape), weights, torch.float32, expert_halves=True)
    (node,) = [node for node in model.graph.node if node.op_type == "MoE"]
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    fc1, fc2, b2 = (initializers[node.input[position]] for position in (2, 4, 5))
    assert fc1.shape == (4 * slices, 2 * inter // slices, 5) and fc2.shape == (4 * slices, 5, inter // slices)
    assert next(attr.i for attr in node.attribute if attr.name == "k") == 2 * slices
    assert not b2[4:].any() and b2[:4].any()
    assert check_case(OpCase(case.attrs, case.hidden, case.router_logits, *(weights[name] for name in
                             ("w_gate_up", "w_down", "b_gate_up", "b_down"))),
                      [OnnxRuntimeLowering("onnxruntime", expert_halves=True)]) == {}


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nonfinite_inputs_give_nan_rows_everywhere(scoring, dtype):
    """The rule (reference.py, docs/grouped-moe.md): a token with a NaN or an infinity in its
    hidden or router-logit row gets an all-NaN output row; the others are untouched."""
    logits = torch.randint(-8, 9, (7, 6), generator=torch.Generator().manual_seed(1)) / 4
    case = _case(GroupedMoEAttributes(top_k=2, scoring=scoring), logits, dtype=dtype)
    case.hidden[1, 0], case.hidden[2, 3] = float("nan"), float("inf")
    case.router_logits[3, 1], case.router_logits[4, 5], case.router_logits[5, 2] = float("nan"), float("inf"), -float("inf")
    expected = reference_output(case)
    assert torch.from_numpy(expected).isnan().all(dim=1).tolist() == [False, True, True, True, True, True, False]
    for implementation in implementations():
        if not implementation.skip_reason(case):
            got = torch.from_numpy(implementation.run(case))
            assert got.isnan().all(dim=1).tolist() == [False, True, True, True, True, True, False], implementation.name
            torch.testing.assert_close(got[[0, 6]], torch.from_numpy(expected[[0, 6]]), rtol=2e-2, atol=2e-2)


def test_no_implementation_is_the_reference_compared_with_itself(monkeypatch):
    """With the reference replaced by one that raises wherever an implementation could reach
    it, every implementation still runs (or skips): none of them is the reference."""
    import moe_compile.grouped_moe_op.op as op_module

    def poisoned(*args, **kwargs):
        raise AssertionError("an implementation ran the PyTorch reference")

    monkeypatch.setattr(op_module, "grouped_moe_reference", poisoned)
    case = _case(GroupedMoEAttributes(top_k=2), torch.randn(3, 4, generator=torch.Generator().manual_seed(2)))
    ran = [implementation.name for implementation in implementations() if not implementation.skip_reason(case)]
    for implementation in implementations():
        if not implementation.skip_reason(case):
            implementation.run(case)
    assert ran  # at least the ONNX Runtime lowerings run on every machine
