"""The torch model that an export, a parity check and bench all start from: the folder's model,
loaded, rewritten to a plan's (or given) per-layer top-k, in a precision. Here, in compiler/,
so that validate/ builds its reference without going through export/."""

from __future__ import annotations

import torch

from moe_compile.dtypes import torch_dtype

from .ir import MoEModel
from .loader import load_causal_lm
from .rewrite import rewrite_model


def _top_k(moe_model: MoEModel, top_k: dict[int, int] | None) -> dict[int, int]:
    return top_k if top_k is not None else {spec.index: spec.base_top_k for spec in moe_model.layers}


def compiled_model(moe_model: MoEModel, dtype: str = "fp32",
                   top_k: dict[int, int] | None = None) -> tuple[torch.nn.Module, dict]:
    """The torch model the ONNX file is made from: loaded, rewritten to `top_k` (a plan's; default
    the base top-k)."""
    top_k = _top_k(moe_model, top_k)
    model = rewrite_model(load_causal_lm(moe_model), moe_model, top_k)
    return model.to(torch_dtype(dtype)).eval(), top_k


def skeleton_model(moe_model: MoEModel, dtype: str = "fp32",
                   top_k: dict[int, int] | None = None) -> tuple[torch.nn.Module, dict]:
    """`compiled_model` without reading a weight: what a streamed export traces.

    Parameters are allocated at their shapes and dtype but never written (transformers'
    `no_init_weights`), so the kernel backs them with pages only where something writes;
    buffers the model computes itself (rotary frequencies) are computed as in `compiled_model`.
    Tracing reads shapes alone; the values are bound to the checkpoint afterwards.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    top_k = _top_k(moe_model, top_k)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(moe_model.config, dtype=torch_dtype(dtype))
    model = rewrite_model(model, moe_model, top_k)
    return model.to(torch_dtype(dtype)).eval(), top_k
