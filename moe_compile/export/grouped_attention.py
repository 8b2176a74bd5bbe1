"""Attention as the export traces it: query heads grouped onto their key/value head, no copy of the cache.

transformers' SDPA attention repeats every key/value head for the query heads that share it
(`repeat_kv`) before the product, and torch.onnx writes that as an Expand of the whole KV cache
per layer and step, a Transpose of the expanded keys, and a NaN guard over the probabilities.
At decode the cache is the large operand: after a 2048-token prompt those copies made ONNX
Runtime's decode slower than eager PyTorch's (benchmarks/quantize_speed.py).

Here the query heads of one group are stacked along the sequence axis instead,
[batch, kv heads, groups x sequence, dim], so each product reads the keys and values as they are
cached; ONNX Runtime folds the keys' transpose into its MatMul. The mask is transformers' own
SDPA mask (boolean, True where a position is seen), added as 0 / the dtype's lowest value; a
query row that sees nothing gets zeros, as the SDPA graph's NaN guard gives it.

Used while tracing models whose attention is transformers' SDPA (every adapter's but gpt-oss',
whose sinks need the eager attention); not with `--ort-fusions`, whose fusions match the SDPA form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

NAME = "moe_compile_grouped"


def grouped_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, S, D], key [B, KV, T, D], value [B, KV, T, Dv] -> ([B, S, H, Dv], None), as
    transformers' attention functions return it (no attention weights)."""
    batch, heads, length, dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = dim ** -0.5 if scaling is None else scaling
    grouped = (query * scale).reshape(batch, kv_heads, groups * length, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).view(batch, kv_heads, groups, length, total)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and length > 1 and causal:
        positions = torch.arange(total, device=query.device)
        attention_mask = (positions[None, :] <= positions[total - length:, None])[None, None]  # [1, 1, S, T]
    seen = None
    if attention_mask is not None:
        mask = _per_group(attention_mask, kv_heads, groups)
        if mask.dtype == torch.bool:
            seen = mask.any(dim=-1, keepdim=True)
            mask = torch.where(mask, 0.0, torch.finfo(scores.dtype).min).to(scores.dtype)
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs.view(batch, kv_heads, groups * length, total), value)
    out = out.view(batch, kv_heads, groups, length, value.shape[-1])
    if seen is not None:
        out = out * seen.to(out.dtype)
    return out.view(batch, heads, length, value.shape[-1]).transpose(1, 2).contiguous(), None


def _per_group(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A mask [B, 1 or H, S, T] (or [S, T]) as [B, 1 or KV, 1 or G, S, T], to add to the grouped scores."""
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])


@contextlib.contextmanager
def grouped_attention(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """While inside, a model built with transformers' SDPA attention runs `grouped_query_attention`
    (with SDPA's masks); -> whether it does. Other attention implementations are left as they are."""
    config = model.config
    if not enabled or config._attn_implementation != "sdpa":
        yield False
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_query_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
