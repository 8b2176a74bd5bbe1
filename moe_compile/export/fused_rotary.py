"""Rotary position embedding as one node per tensor: ONNX Runtime's com.microsoft.RotaryEmbedding.

transformers applies RoPE as `x * cos + rotate_half(x) * sin`, which torch.onnx writes as seven
nodes per tensor (two Slices, a Neg, a Concat, two Muls, an Add), fourteen per layer for the query
and key. At a decode step every node costs ONNX Runtime a few microseconds whatever its size:
on onnx_speed.py's model the rotations were 84 of the 562 nodes of a decode step's graph, and one
node per tensor made a step 3-4 % faster (by hand, docs/export.md).

While an ONNX Runtime export is traced, each model module that applies RoPE that way (it defines
`rotate_half` and `apply_rotary_pos_emb`) has `apply_rotary_pos_emb` replaced by `rotary`, one
custom op per tensor, lowered to RotaryEmbedding (lowering/rotary_embedding.py). The op takes the
model's own cos and sin ([B, S, D], each half the same, as every transformers rotary embedding
builds them), so any RoPE scaling the model uses is kept: the lowering hands RotaryEmbedding the
first half of each position's cos and sin as a cache of B*S rows and position ids 0..B*S-1.
A call the op does not fit (cos narrower than the head: partial rotary; another layout) runs the
module's own function.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch

ROTARY_OP = "moe_compile::rotary"


@torch.library.custom_op(ROTARY_OP, mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, N, S, D] rotated by cos and sin [B, S, D] (halves equal): x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


@rotary.register_fake
def _(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _fused(original):
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        fits = (unsqueeze_dim == 1 and q.dim() == k.dim() == 4 and cos.dim() == 3
                and cos.shape[-1] == q.shape[-1] == k.shape[-1] and q.shape[-1] % 2 == 0)
        if not fits:
            return original(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
        return rotary(q, cos, sin), rotary(k, cos, sin)

    return apply_rotary_pos_emb


@contextlib.contextmanager
def fused_rotary(model: torch.nn.Module, enabled: bool = True) -> Iterator[int]:
    """While inside, the modules `model` is built from apply RoPE through `rotary` -> how many
    modules were patched (0: the model applies it some other way, or not `enabled`)."""
    modules = {sys.modules[type(module).__module__] for module in model.modules()} if enabled else set()
    patched = {module: module.apply_rotary_pos_emb for module in modules
               if hasattr(module, "rotate_half") and callable(getattr(module, "apply_rotary_pos_emb", None))}
    for module, original in patched.items():
        module.apply_rotary_pos_emb = _fused(original)
    try:
        yield len(patched)
    finally:
        for module, original in patched.items():
            module.apply_rotary_pos_emb = original
