"""The torch model that an export, a parity check and bench all start from: the folder's model,
loaded, rewritten to a plan's (or given) per-layer top-k, in a precision. Here, in compiler/,
so that validate/ builds its reference without going through export/."""

from __future__ import annotations

from pathlib import Path

import torch

from moe_compile.dtypes import torch_dtype

from .ir import MoEModel
from .lexi.plan import load_plan
from .loader import load_causal_lm
from .rewrite import rewrite_model


def compiled_model(moe_model: MoEModel, plan: str | Path | None, dtype: str = "fp32",
                   top_k: dict[int, int] | None = None) -> tuple[torch.nn.Module, dict]:
    """The torch model the ONNX file is made from: loaded, rewritten to the plan's top-k."""
    if top_k is None:
        top_k = load_plan(plan, moe_model) if plan else {spec.index: spec.base_top_k for spec in moe_model.layers}
    model = rewrite_model(load_causal_lm(moe_model), moe_model, top_k)
    return model.to(torch_dtype(dtype)).eval(), top_k
