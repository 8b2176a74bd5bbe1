"""`moe-compile eval MODEL [--plan plan.json] [--text FILE] [--json]`: held-out perplexity."""

from __future__ import annotations

import argparse
from pathlib import Path

from moe_compile.compiler.lexi.plan import load_plan
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import rewrite_model
from moe_compile.errors import InvalidInput
from moe_compile.jsonio import print_report
from moe_compile.validate.perplexity import Perplexity, eval_windows, perplexity


def evaluate(model: str, plan: str | Path | None = None, text: str | Path | None = None) -> Perplexity:
    """Perplexity of MODEL (rewritten to `plan`'s per-layer top-k when given) on its held-out text."""
    moe_model = load_moe_model(model)
    top_k = load_plan(plan, moe_model) if plan else None  # a bad plan fails before any work
    token_windows = eval_windows(moe_model.path, text)
    vocab_size = int(moe_model.config.vocab_size)
    if int(token_windows.max()) >= vocab_size:
        raise InvalidInput(f"{moe_model.path}: tokenizer.json gives ids up to {int(token_windows.max())}, "
                           f"beyond the model's vocab_size {vocab_size}")
    lm = load_causal_lm(moe_model)
    if top_k is not None:
        lm = rewrite_model(lm, moe_model, top_k)
    return perplexity(lm, token_windows, vocab_size)


def run_eval(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.plan, args.text)
    if args.json:
        print_report(result.to_json())
    else:
        print(f"held-out perplexity {result.perplexity:.4f} (loss {result.loss:.4f} nats over "
              f"{result.tokens} tokens, vocab {result.vocab_size})" + (f" under {args.plan}" if args.plan else ""))
    return 0
