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


@pytest.mark.parametrize("row", [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [2.0, 2.0, 0.0, 2.0]])
def test_com_microsoft_moe_ties_go_to_the_lower_expert(row):
    """ONNX Runtime's MoE kernel sorts ties to the higher index; the lowering reverses the experts."""
    case = _case(GroupedMoEAttributes(top_k=2), torch.tensor([row] * 3))
    assert check_case(case, [OnnxRuntimeLowering("onnxruntime")]) == {}


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
