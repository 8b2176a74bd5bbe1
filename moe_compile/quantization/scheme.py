"""`--quantize int8|int4 [--block-size N]`: the scheme an export is quantized with, checked
against the model before any work, and carried in the file's metadata so that validate and eval
know what the file holds.

What is quantized (the same set on both sides: the ONNX pass, export/quantize_pass.py, and the
PyTorch reference, `dequantize_model`): every MoE layer's experts, and every dense projection
with more than one output (attention, shared expert, lm_head). The router stays fp32 (its
logits choose the experts; quantizing it would change routing, not just values) and so does a
one-output gate (Qwen2-MoE's shared-expert gate: a few hundred bytes). A dense projection whose
input size the block does not divide stays fp32; the experts' sizes must be divisible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moe_compile.errors import InvalidInput

from .blocks import BITS, dequantized

BLOCK_SIZES = (128, 64, 32, 16)  # what QMoE and MatMulNBits take: powers of two >= 16
DEFAULT_BLOCK_SIZE = 32
METADATA_KEY = "moe_compile.quantize"  # "int4/32": scheme/block size


@dataclass(frozen=True)
class QuantScheme:
    name: str  # int4 | int8
    block_size: int

    @property
    def bits(self) -> int:
        return BITS[self.name]

    def metadata(self) -> str:
        return f"{self.name}/{self.block_size}"

    @classmethod
    def from_metadata(cls, value: str) -> QuantScheme:
        name, _, block = value.partition("/")
        if name not in BITS or not block.isdigit() or int(block) not in BLOCK_SIZES:
            raise ValueError(value)
        return cls(name, int(block))


def quant_scheme(name: str | None, block_size: int | None, hidden: int, intermediates: list[int]) -> QuantScheme | None:
    """The scheme for `--quantize name [--block-size N]` on a model of this hidden size and these
    expert intermediate sizes; InvalidInput (one line) for a target or block size that cannot be."""
    if name is None:
        if block_size is not None:
            raise InvalidInput("--block-size needs --quantize int8|int4")
        return None
    if name not in BITS:
        raise InvalidInput(f"--quantize {name}: not a supported target (int8, int4)")
    sizes = [("hidden size", hidden)] + [("expert intermediate size", size) for size in sorted(set(intermediates))]
    if block_size is None:
        block_size = next((b for b in BLOCK_SIZES if b <= DEFAULT_BLOCK_SIZE and all(s % b == 0 for _, s in sizes)), None)
        if block_size is None:
            raise InvalidInput(f"--quantize {name}: no block size of 16 or more divides the hidden size {hidden} "
                               f"and the expert intermediate sizes {sorted(set(intermediates))}")
        return QuantScheme(name, block_size)
    if block_size not in BLOCK_SIZES:
        raise InvalidInput(f"--block-size {block_size}: must be one of {', '.join(map(str, reversed(BLOCK_SIZES)))}")
    for what, size in sizes:
        if size % block_size:
            raise InvalidInput(f"--block-size {block_size} does not divide the {what} {size}")
    return QuantScheme(name, block_size)


def quantized_linear(module: nn.Module, block_size: int) -> bool:
    """Whether a dense projection is quantized (see the module docstring)."""
    return isinstance(module, nn.Linear) and module.out_features > 1 and module.in_features % block_size == 0


@torch.no_grad()
def dequantize_model(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """In place: every weight the quantized export holds quantized replaced by its dequantized
    values (the reference a quantized file is checked against). Tied weights are untied."""
    from moe_compile.compiler.rewrite import StaticTopKMoE

    for module in list(model.modules()):
        if isinstance(module, StaticTopKMoE):
            module.w_gate_up = nn.Parameter(dequantized(module.w_gate_up, scheme.bits, scheme.block_size))
            module.w_down = nn.Parameter(dequantized(module.w_down, scheme.bits, scheme.block_size))
        elif quantized_linear(module, scheme.block_size):
            module.weight = nn.Parameter(dequantized(module.weight, scheme.bits, scheme.block_size))
    return model
