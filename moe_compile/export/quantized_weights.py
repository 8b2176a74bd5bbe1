"""A weight's block-quantized values and scales as two initializers, computed slice by slice.

export/quantize_pass.py replaces a weight [..., N, K] (K the input features) by its packed values
and their scales. Both come from one pass over the weight's rows: an expert at a time, or a block
of rows (a streamed weight's own slices, compiler/weight_sources.py), so a quantized export holds
one MoE layer's experts or one slice of a dense weight, never the model. The packed tensor is
written first (streamed_weights.py writes a layer's tensors in the order they were added); the
scales of that pass are kept, a fraction of its size (one fp32 per block), until the scales
tensor is written right after it. Asked for alone, the scales are computed again from the weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import onnx_ir as ir
import torch

from moe_compile.quantization import pack, quantize_blocks
from moe_compile.quantization.blocks import QuantizedBlocks
from moe_compile.quantization.scheme import QuantScheme

from .streamed_weights import SlicedTensor, StreamedTensor


class BlockQuantization:
    """One weight, as its rows [..., N, K] quantized by `scheme`. `transposed`: the graph holds
    it as [K, N] (MatMul's right operand), so its rows are that tensor's columns."""

    def __init__(self, weight: ir.TensorProtocol, scheme: QuantScheme, transposed: bool = False) -> None:
        self.weight, self.scheme, self.transposed = weight, scheme, transposed
        self._kept_scales: np.ndarray | None = None
        dims = list(weight.shape.numpy())
        if transposed:
            dims = dims[::-1]
        *lead, n, k = dims
        blocks = k // scheme.block_size
        self.layer = weight.layer if isinstance(weight, SlicedTensor) else None
        self.packed_shape = (*lead, n, blocks, scheme.block_size * scheme.bits // 8)
        self.scales_shape = (*lead, n, blocks)

    def _rows(self) -> Iterator[torch.Tensor]:
        """The weight's rows in order along its first axis: an expert, or a block of rows, at a time."""
        if isinstance(self.weight, StreamedTensor):
            recipe = self.weight.recipe
            if self.transposed:
                perm = recipe.perm or tuple(range(len(recipe.source_shape)))
                recipe = replace(recipe, perm=perm[::-1])  # 2-D: back to the checkpoint's [N, K] when it was folded
            yield from recipe.slices()
            return
        tensor = torch.from_numpy(np.array(self.weight.numpy()))  # a writable copy: an in-memory export's weight
        if tensor.dim() == 3:
            yield from tensor  # expert by expert
        else:
            yield tensor.T if self.transposed else tensor

    def _blocks(self) -> Iterator[QuantizedBlocks]:
        for rows in self._rows():
            yield quantize_blocks(rows, self.scheme.bits, self.scheme.block_size)

    def packed_slices(self) -> Iterator[np.ndarray]:
        """The packed values, slice by slice; the scales of the same pass are kept for `scale_slices`,
        in one array allocated before the pass. (Kept as an array per slice, they sat between the
        pass's large temporaries in the allocator's heaps and kept those from being returned: the
        helper process of a Qwen3-30B-A3B-shaped int4 export peaked at 2.1-3.0 GB, 1.7 GB with this.)"""
        kept = np.empty(self.scales_shape, np.float32)
        rows = kept.reshape(-1, kept.shape[-1])
        done = 0
        for blocks in self._blocks():
            scales = blocks.scales.numpy().reshape(-1, rows.shape[-1])
            rows[done:done + len(scales)] = scales
            done += len(scales)
            yield pack(blocks)
        self._kept_scales = kept

    def scale_slices(self) -> Iterator[np.ndarray]:
        """The scales: those of the last `packed_slices` pass (then dropped), or computed again."""
        kept, self._kept_scales = self._kept_scales, None
        if kept is not None:
            yield kept
            return
        for blocks in self._blocks():
            yield blocks.scales.numpy()


class QuantizedTensor(SlicedTensor):
    """One of a `BlockQuantization`'s two initializers: the packed values (uint8, `shape` as the
    op takes them) or the scales (fp32)."""

    def __init__(self, quantization: BlockQuantization, part: str, name: str, shape: tuple[int, ...] | None = None) -> None:
        if part not in ("packed", "scales"):
            raise ValueError(part)
        self.quantization, self.part = quantization, part
        natural = quantization.packed_shape if part == "packed" else quantization.scales_shape
        shape = shape or natural
        if int(np.prod(shape)) != int(np.prod(natural)):
            raise ValueError(f"{name}: shape {shape} does not hold {natural}")
        dtype = ir.DataType.UINT8 if part == "packed" else ir.DataType.FLOAT
        super().__init__(self.values, dtype=dtype, shape=ir.Shape(shape), name=name)

    @property
    def layer(self) -> int | None:
        return self.quantization.layer

    def parts(self) -> Iterator[np.ndarray]:
        return self.quantization.packed_slices() if self.part == "packed" else self.quantization.scale_slices()

    def byte_parts(self) -> Iterator[memoryview]:
        for part in self.parts():
            yield memoryview(np.ascontiguousarray(part).reshape(-1).view(np.uint8))

    def values(self) -> ir.TensorProtocol:
        whole = np.concatenate([part.reshape(-1) for part in self.parts()])
        return ir.tensor(whole.reshape(self.shape.numpy()), name=self.name)

    def key(self) -> tuple | None:
        quantization = self.quantization
        weight = quantization.weight.key() if isinstance(quantization.weight, SlicedTensor) else None
        return None if weight is None else (self.part, quantization.scheme, quantization.transposed, weight)


def quantized_pair(weight: ir.TensorProtocol, scheme: QuantScheme, name: str,
                   transposed: bool = False) -> tuple[QuantizedTensor, QuantizedTensor]:
    """`weight`'s packed values (named `name`) and scales (`{name}.scales`), from one
    `BlockQuantization`. A stack of experts [E, N, K] is packed as QMoE takes it, [E, N, K*bits/8]."""
    quantization = BlockQuantization(weight, scheme, transposed)
    packed_shape = None
    if len(quantization.scales_shape) == 3:
        experts, n, _ = quantization.scales_shape
        packed_shape = (experts, n, int(np.prod(quantization.packed_shape[2:])))
    return (QuantizedTensor(quantization, "packed", name, packed_shape),
            QuantizedTensor(quantization, "scales", f"{name}.scales"))
