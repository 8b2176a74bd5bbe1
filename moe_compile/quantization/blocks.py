"""Symmetric block-wise weight quantization along the input features (K), as ONNX Runtime's
QMoE and MatMulNBits dequantize it:

    w [N, K] -> blocks of `block_size` along K; per block scale = max|w| / qmax (qmax 7 for int4,
    127 for int8; an all-zero block gets scale 1), q = clamp(round(w / scale), -qmax - 1, qmax)
    stored as q + 2^(bits-1) (the ops' default zero point, so no zero-point tensor is written);
    dequantized w' = (stored - 2^(bits-1)) * scale = q * scale, exactly in fp32.

The export quantizes the fp32 weights with `quantize_blocks`; validate's reference model holds
`dequantized(...)` of the same weights, so both sides start from bit-identical weights and the
comparison can keep fp32's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BITS = {"int4": 4, "int8": 8}


@dataclass(frozen=True)
class QuantizedBlocks:
    stored: torch.Tensor  # [N, K] uint8, q + zero point (unpacked)
    scales: torch.Tensor  # [N, K / block_size] fp32
    bits: int
    block_size: int


def quantize_blocks(weight: torch.Tensor, bits: int, block_size: int) -> QuantizedBlocks:
    """weight [..., N, K] (any float dtype) -> its blocks quantized to `bits` (see the module docstring)."""
    q, scales = _rounded(weight, bits, block_size)
    # through int16 (q + zero point is 0..255): torch converts float to int16, and int16 to uint8,
    # 3x faster than float to uint8
    stored = q.add_(1 << (bits - 1)).to(torch.int16).to(torch.uint8).reshape(weight.shape)
    return QuantizedBlocks(stored, scales, bits, block_size)


def dequantized(weight: torch.Tensor, bits: int, block_size: int) -> torch.Tensor:
    """What the quantized op computes with in place of `weight` [..., N, K], in weight's dtype:
    q * scale, the same numbers as (stored - zero point) * scale. A stack of matrices (a layer's
    experts) is done one matrix at a time, so that the work tensors are one expert's."""
    if weight.dim() > 2:
        out = torch.empty_like(weight)
        for index, matrix in enumerate(weight):
            out[index] = dequantized(matrix, bits, block_size)
        return out
    q, scales = _rounded(weight, bits, block_size)
    return q.mul_(scales[..., None]).reshape(weight.shape).to(weight.dtype)


def _rounded(weight: torch.Tensor, bits: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (q [..., N, K / block, block]: each value / its block's scale, rounded and clamped to
    the signed range, as fp32; the scales [..., N, K / block]). In place where it can be: this
    runs over every weight of a quantized export, and of its reference on every forward pass."""
    *lead, n, k = weight.shape
    if k % block_size:
        raise ValueError(f"block size {block_size} does not divide the input size {k}")
    qmax = (1 << (bits - 1)) - 1
    blocks = weight.float().reshape(*lead, n, k // block_size, block_size)
    absmax = blocks.abs().amax(dim=-1)  # 4x faster than aminmax over blocks this short
    scales = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    q = blocks / scales[..., None]
    return q.round_().clamp_(-qmax - 1, qmax), scales


def pack(blocks: QuantizedBlocks) -> np.ndarray:
    """stored [..., N, K] -> the ops' byte layout [..., N, K / block, block * bits / 8] uint8; for
    4 bits two values a byte, the first in the low nibble."""
    stored = np.ascontiguousarray(blocks.stored.numpy())
    if blocks.bits == 4:
        # Each pair (first, second) read as one little-endian uint16 is first + 256 * second; with
        # both below 16, the low byte of that | (that >> 4) is first + 16 * second. One pass over
        # half the elements: 5x faster than masking and shifting the two strided halves.
        pairs = stored.view("<u2")
        stored = (pairs | (pairs >> 4)).astype(np.uint8)
    *lead, n, packed_k = stored.shape
    blob = blocks.block_size * blocks.bits // 8
    return np.ascontiguousarray(stored.reshape(*lead, n, packed_k // blob, blob))
