"""Op-level parity: one GroupedMoE case through every implementation, compared with the reference.

An implementation is a small object with a `name`, `skip_reason(case)` (why it cannot run a
case here, or None) and `run(case)` -> the output as fp32 numpy. `implementations()` lists
those of this machine; a new one (the TensorRT plugin) is one more entry,
and the fuzz tests (tests/validate/test_op_fuzz.py) pick it up.

    OpCase ──► grouped_moe_reference (the definition) ──► expected
          └──► each implementation ──► got ──► mismatch(expected, got, tolerance of the dtype)
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch

from moe_compile.dtypes import element_type
from moe_compile.grouped_moe_op import GroupedMoEAttributes, call_grouped_moe, grouped_moe_reference

from .tolerances import TOLERANCES, Tolerance

@dataclass(frozen=True)
class OpCase:
    """The op's inputs (hidden and weights in one dtype; router_logits in that dtype too)."""

    attrs: GroupedMoEAttributes
    hidden: torch.Tensor  # [T, H]
    router_logits: torch.Tensor  # [T, E]
    w_gate_up: torch.Tensor  # [E, 2I, H]
    w_down: torch.Tensor  # [E, H, I]
    b_gate_up: torch.Tensor | None = None  # [E, 2I]
    b_down: torch.Tensor | None = None  # [E, H]
    score_bias: torch.Tensor | None = None  # [E] fp32

    @property
    def dtype(self) -> str:
        return element_type(torch=self.hidden.dtype).short

    def weights(self) -> dict[str, torch.Tensor | None]:
        return {"w_gate_up": self.w_gate_up, "w_down": self.w_down, "b_gate_up": self.b_gate_up,
                "b_down": self.b_down, "score_bias": self.score_bias}

    def describe(self) -> str:
        tokens, hidden = self.hidden.shape
        experts, inter2, _ = self.w_gate_up.shape
        return (f"T={tokens} H={hidden} I={inter2 // 2} E={experts} {self.dtype} biases={self.b_gate_up is not None} "
                f"score_bias={self.score_bias is not None} {self.attrs}")


def reference_output(case: OpCase) -> np.ndarray:
    return grouped_moe_reference(case.hidden, case.router_logits, attrs=case.attrs, **case.weights()).float().numpy()


class TorchOpOnCuda:
    """`moe_compile::grouped_moe` through torch.library on a CUDA GPU: the dispatcher's path to our
    Triton kernel (the registration, not only the launcher). Not on the CPU, whose kernel is the
    reference itself, nor without triton, where the CUDA kernel falls back to the reference:
    parity counts only implementations that are not the reference."""

    name = "torch.library (cuda)"

    def skip_reason(self, case: OpCase) -> str | None:
        if not torch.cuda.is_available():
            return "no CUDA GPU"
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed: the op's CUDA kernel would be the reference"
        return None

    def run(self, case: OpCase) -> np.ndarray:
        return _run_on("cuda", call_grouped_moe, case)


class TritonKernel:
    """Our Triton kernels (plugins/grouped_moe/launcher.py): on a CUDA GPU, or on the CPU in
    Triton's interpreter (TRITON_INTERPRET=1, which tests/conftest.py sets where there is no GPU)."""

    name = "triton kernel"

    def __init__(self) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def skip_reason(self, case: OpCase) -> str | None:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        if self.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return "no GPU and TRITON_INTERPRET is not 1"
        if self.device == "cpu" and case.dtype == "bf16":
            return "Triton 3.6's interpreter multiplies bf16 tl.dot operands as raw bits"
        return None

    def run(self, case: OpCase) -> np.ndarray:
        from moe_compile.plugins.grouped_moe.launcher import grouped_moe_triton

        return _run_on(self.device, grouped_moe_triton, case)


def _run_on(device: str, function, case: OpCase) -> np.ndarray:
    """`function(hidden, router_logits, attrs=..., **weights)` with the case on `device`, as fp32 numpy."""
    weights = {name: None if t is None else t.to(device) for name, t in case.weights().items()}
    out = function(case.hidden.to(device), case.router_logits.to(device), attrs=case.attrs, **weights)
    return out.float().cpu().numpy()


class OnnxRuntimeLowering:
    """The op lowered for an export target (`onnx`: standard ops; `onnxruntime`: com.microsoft.MoE
    where it can express the layer), as a one-op model (export/op_model.py) run by ONNX Runtime."""

    DTYPES = ("fp32", "fp16")  # ONNX Runtime's CPU kernels have no bf16 MatMul

    def __init__(self, target: str, expert_halves: bool = False) -> None:
        self.target, self.expert_halves = target, expert_halves
        self.name = f"onnxruntime ({target} lowering{', experts in halves' if expert_halves else ''})"

    def skip_reason(self, case: OpCase) -> str | None:
        return None if case.dtype in self.DTYPES else f"{case.dtype}: no ONNX Runtime CPU kernels"

    def run(self, case: OpCase) -> np.ndarray:
        from moe_compile.export.op_model import grouped_moe_onnx

        model = grouped_moe_onnx(self.target, case.attrs, tuple(case.hidden.shape), case.weights(), case.hidden.dtype,
                                 self.expert_halves)
        session = _session(model.SerializeToString())
        (out,) = session.run(None, {"hidden": case.hidden.numpy(), "router_logits": case.router_logits.numpy()})
        return out.astype(np.float32)


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # parity, not speed: keep the CPU for the rest
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


@functools.cache
def implementations() -> tuple:
    """Every GroupedMoE implementation that is not the reference; add new ones here."""
    return (TorchOpOnCuda(), TritonKernel(), OnnxRuntimeLowering("onnx"),
            OnnxRuntimeLowering("onnxruntime"), OnnxRuntimeLowering("onnxruntime", expert_halves=True))


def mismatch(expected: np.ndarray, got: np.ndarray, tolerance: Tolerance) -> str | None:
    """None when `got` matches: NaN exactly where `expected` is NaN, the same infinities, and
    finite values within the tolerance; otherwise one line saying where it differs."""
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    nan_expected, nan_got = np.isnan(expected), np.isnan(got)
    if (nan_expected != nan_got).any():
        row = int(np.argwhere(nan_expected != nan_got)[0][0])
        return f"NaN pattern differs first in token {row}: expected {expected[row, :4]}, got {got[row, :4]}"
    finite = ~nan_expected
    close = np.isclose(got[finite], expected[finite], rtol=tolerance.rtol, atol=tolerance.atol)
    if not close.all():
        diff = np.abs(got[finite] - expected[finite])
        return f"max |diff| {diff.max():.3g} at {int(diff.argmax())} (rtol {tolerance.rtol:g}, atol {tolerance.atol:g})"
    return None


def check_case(case: OpCase, candidates=None) -> dict[str, str]:
    """{implementation name: what differs} for every implementation that disagrees with the reference."""
    expected = reference_output(case)
    failures = {}
    for implementation in candidates if candidates is not None else implementations():
        if implementation.skip_reason(case):
            continue
        problem = mismatch(expected, implementation.run(case), TOLERANCES[case.dtype])
        if problem:
            failures[implementation.name] = problem
    return failures
