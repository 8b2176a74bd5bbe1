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

For ONNX Runtime (`prompt_kernel`) the attention is traced as `torch.cond` (an If in the graph):
a whole causal prompt of MIN_PROMPT_KERNEL_TOKENS or more with nothing cached runs
`causal_prompt_attention` (one GroupQueryAttention node, lowering/prompt_attention.py), which
computes only the causal half of the scores; decode steps, short, padded and cached prompts the
grouped form. Values narrower than the keys (DeepSeek's MLA) keep the grouped form alone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

NAME = "moe_compile_grouped"
PROMPT_KERNEL_OP = "moe_compile::causal_prompt_attention"
MIN_PROMPT_KERNEL_TOKENS = 512  # measured: benchmarks/prompt_attention_ab.py, docs/export.md


def grouped_query_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            is_causal: bool | None = None, prompt_kernel: bool = False,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, H, S, D], key [B, KV, T, D], value [B, KV, T, Dv] -> ([B, S, H, Dv], None), as
    transformers' attention functions return it (no attention weights). `prompt_kernel`: an If
    when the graph runs, `causal_prompt_attention` for a whole causal prompt, this otherwise."""
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if prompt_kernel and causal and value.shape[-1] == query.shape[-1] and (
            attention_mask is None or attention_mask.dtype == torch.bool):
        operands = (query, key, value) if attention_mask is None else (query, key, value, attention_mask)
        return torch.cond(_whole_causal_prompt(query, key, attention_mask),
                          lambda q, k, v, *mask: causal_prompt_attention(q, k, v, scale),
                          lambda q, k, v, *mask: _grouped(q, k, v, mask[0] if mask else None, scale, causal),
                          operands), None
    return _grouped(query, key, value, attention_mask, scale, causal), None


def _grouped(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
             scale: float, causal: bool) -> torch.Tensor:
    batch, heads, length, dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    grouped = (query * scale).reshape(batch, kv_heads, groups * length, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).view(batch, kv_heads, groups, length, total)
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
    return out.view(batch, heads, length, value.shape[-1]).transpose(1, 2).contiguous()


def _whole_causal_prompt(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Whether this call is a prompt of at least MIN_PROMPT_KERNEL_TOKENS with nothing cached whose mask
    is plain causal (a 0-d bool tensor, computed when the graph runs). transformers' SDPA masks are
    the causal mask with entries taken away (padding, sliding windows, chunks); each of those takes
    some from the last row, so a last row that sees every key means the mask is causal."""
    # lengths as tensors computed when the graph runs (from the shapes, reading no data): comparing
    # the traced sizes themselves would constrain the export's dynamic axes
    length = query.new_ones(query.shape[2], dtype=torch.int64).sum()
    total = key.new_ones(key.shape[2], dtype=torch.int64).sum()
    whole = (length == total) & (length >= MIN_PROMPT_KERNEL_TOKENS)
    return whole if mask is None else whole & mask[..., -1, :].all()


@torch.library.custom_op(PROMPT_KERNEL_OP, mutates_args=())
def causal_prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of a prompt with nothing cached and no padding: query [B, H, S, D], key and
    value [B, KV, S, D] -> [B, S, H, D]. Exported for ONNX Runtime as one GroupQueryAttention node
    (lowering/prompt_attention.py); here the grouped form."""
    return _grouped(query, key, value, None, scale, causal=True)


@causal_prompt_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    batch, heads, length, dim = query.shape
    return query.new_empty(batch, length, heads, dim)


def _per_group(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A mask [B, 1 or H, S, T] (or [S, T]) as [B, 1 or KV, 1 or G, S, T], to add to the grouped scores."""
    if mask.dim() == 2:
        mask = mask[None, None]
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])


@contextlib.contextmanager
def grouped_attention(model: torch.nn.Module, enabled: bool = True, prompt_kernel: bool = False) -> Iterator[bool]:
    """While inside, a model built with transformers' SDPA attention runs `grouped_query_attention`
    (with SDPA's masks); -> whether it does. Other attention implementations are left as they are.
    `prompt_kernel`: long causal prompts with nothing cached take `causal_prompt_attention`."""
    config = model.config
    if not enabled or config._attn_implementation != "sdpa":
        yield False
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, functools.partial(grouped_query_attention, prompt_kernel=prompt_kernel))
    AttentionMaskInterface.register(NAME, sdpa_mask)
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
