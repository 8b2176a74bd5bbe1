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
    *lead, n, k = weight.shape
    if k % block_size:
        raise ValueError(f"block size {block_size} does not divide the input size {k}")
    qmax = (1 << (bits - 1)) - 1
    blocks = weight.float().reshape(*lead, n, k // block_size, block_size)
    absmax = blocks.abs().amax(dim=-1)  # [..., N, K/B]
    scales = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    q = torch.clamp(torch.round(blocks / scales[..., None]), -qmax - 1, qmax)
    stored = (q + (1 << (bits - 1))).to(torch.uint8).reshape(*lead, n, k)
    return QuantizedBlocks(stored, scales, bits, block_size)


def dequantized(weight: torch.Tensor, bits: int, block_size: int) -> torch.Tensor:
    """What the quantized op computes with in place of `weight` [..., N, K], in weight's dtype;
    a stack of matrices (a layer's experts) one matrix at a time, so that the work tensors are
    one expert's, not the layer's."""
    if weight.dim() > 2:
        out = torch.empty_like(weight)
        for index, matrix in enumerate(weight):
            out[index] = dequantized(matrix, bits, block_size)
        return out
    blocks = quantize_blocks(weight, bits, block_size)
    *lead, n, k = weight.shape
    q = blocks.stored.float() - (1 << (bits - 1))
    values = q.reshape(*lead, n, k // block_size, block_size) * blocks.scales[..., None]
    return values.reshape(weight.shape).to(weight.dtype)


def pack(blocks: QuantizedBlocks) -> np.ndarray:
    """stored [..., N, K] -> the ops' byte layout [..., N, K / block, block * bits / 8] uint8; for
    4 bits two values a byte, the first in the low nibble."""
    stored = blocks.stored.numpy()
    if blocks.bits == 4:
        stored = stored[..., 0::2] | (stored[..., 1::2] << 4)
    *lead, n, packed_k = stored.shape
    blob = blocks.block_size * blocks.bits // 8
    return np.ascontiguousarray(stored.reshape(*lead, n, packed_k // blob, blob))
