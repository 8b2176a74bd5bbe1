"""Parity tolerances, per dtype: the one table every comparison reads.

fp32: the ONNX graph and PyTorch sum the same products in different orders (e.g. the k
experts of a token), so they differ by round-off, a few ulp of the logits' size.
fp16/bf16: both round every op's output to the storage type, at different places.
A tolerance is never widened without a reason written here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


TOLERANCES = {
    "fp32": Tolerance(rtol=1e-4, atol=1e-4),
    "fp16": Tolerance(rtol=2e-2, atol=2e-2),
    "bf16": Tolerance(rtol=5e-2, atol=5e-2),
}

# Computations on int8 activations (each token's activations quantized to int8 per block before
# the product) differ from the dequantized reference by that rounding, not by round-off alone:
# QMoE's 8-bit experts on ONNX Runtime's CPU provider, which have no fp32 kernel (ORT 1.32's QMoE
# schema), so every step of an int8 export; and MatMulNBits at accuracy_level 4, which a quantized
# export's decode branch uses (export/length_dispatch.py). (4-bit QMoE and MatMulNBits at
# accuracy_level 0 dequantize to fp32: an int4 file's prompts keep fp32's tolerance.)
INT8_ACTIVATIONS = Tolerance(rtol=5e-2, atol=5e-2)
