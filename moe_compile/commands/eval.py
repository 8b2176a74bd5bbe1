"""`moe-compile eval MODEL [--plan plan.json | --onnx FILE [--stepwise]] [--text FILE] [--json]`:
held-out perplexity, of the PyTorch model (at a plan's per-layer top-k when given) or of an exported
ONNX file in ONNX Runtime, so what is measured can be the artefact that ships. `--stepwise` scores
the file the way generation runs it, one token at a time through its KV cache: a quantized file
computes decode steps otherwise than prompts (export/length_dispatch.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from moe_compile.compiler.layered_model import layered_model, weights_fit
from moe_compile.compiler.lexi.plan import load_plan
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import rewrite_model
from moe_compile.errors import InvalidInput
from moe_compile.jsonio import print_report
from moe_compile.validate.perplexity import Logits, Perplexity, eval_windows, module_logits, perplexity


def evaluate(model: str, plan: str | Path | None = None, text: str | Path | None = None,
             onnx: str | Path | None = None, stepwise: bool = False) -> Perplexity:
    """Perplexity on MODEL's held-out text (or `text`) of MODEL rewritten to `plan`'s per-layer
    top-k, or of `onnx`, an export of MODEL, run in ONNX Runtime (each window as one prompt, or
    `stepwise`, one token at a time)."""
    if plan and onnx:
        raise InvalidInput("eval takes --plan or --onnx, not both: an exported model already has its per-layer top-k")
    if stepwise and not onnx:
        raise InvalidInput("--stepwise scores an ONNX file one token at a time: give --onnx FILE")
    moe_model = load_moe_model(model)
    top_k = load_plan(plan, moe_model) if plan else None  # a bad plan fails before any work
    onnx_logits = exported_logits(moe_model, Path(onnx), stepwise) if onnx else None  # so does a bad ONNX file
    token_windows = eval_windows(moe_model.path, text)
    vocab_size = int(moe_model.config.vocab_size)
    if int(token_windows.max()) >= vocab_size:
        raise InvalidInput(f"{moe_model.path}: tokenizer.json gives ids up to {int(token_windows.max())}, "
                           f"beyond the model's vocab_size {vocab_size}")
    if onnx_logits:
        return perplexity(onnx_logits, token_windows, vocab_size)
    return perplexity(module_logits(reference_model(moe_model, top_k)), token_windows, vocab_size)


def reference_model(moe_model, top_k: dict[int, int] | None) -> torch.nn.Module:
    """The transformers model (rewritten to `top_k` if given) where the checkpoint fits in memory,
    else the rewritten model run layer by layer (compiler/layered_model.py: one decoder layer's
    weights resident at a time, each batch of windows rereads the checkpoint)."""
    if not weights_fit(moe_model):
        return layered_model(moe_model, "fp32", top_k)[0]
    lm = load_causal_lm(moe_model)
    return lm if top_k is None else rewrite_model(lm, moe_model, top_k)


def exported_logits(moe_model, path: Path, stepwise: bool = False) -> Logits:
    """An ONNX export of `moe_model` as `Logits`: each batch of windows is one prefill with an empty
    cache, or (`stepwise`) one step per position, each feeding the cache the last step returned."""
    from moe_compile.validate.generation import cached_step, decoder_feed
    from moe_compile.validate.parity import check_metadata_matches, onnx_metadata
    from moe_compile.validate.runners.onnxrt import OnnxRuntimeRunner

    metadata = onnx_metadata(path)
    check_metadata_matches(metadata, moe_model, None, path)
    if metadata["moe_compile.target"] == "tensorrt":
        raise InvalidInput(f"{path} is a tensorrt-target export (plugin nodes ONNX Runtime cannot run): "
                           "export --target onnxruntime to score it here")
    if metadata["moe_compile.dtype"] == "bf16":
        raise InvalidInput(f"{path} is bf16, which ONNX Runtime on the CPU does not run: score an fp32 or fp16 export")
    runner = OnnxRuntimeRunner(path)

    def logits(input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.numpy()
        return torch.from_numpy(runner.infer(decoder_feed(ids, runner.empty_past(ids.shape[0]), 0))["logits"])

    def stepwise_logits(input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.numpy()
        past, steps = runner.empty_past(ids.shape[0]), []
        for position in range(ids.shape[1]):
            outputs, past = cached_step(runner, ids[:, position:position + 1], past, position)
            steps.append(outputs["logits"])
        return torch.from_numpy(np.concatenate(steps, axis=1).astype(np.float32))

    return stepwise_logits if stepwise else logits


def run_eval(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.plan, args.text, args.onnx, args.stepwise)
    if args.json:
        print_report(result.to_json())
    else:
        print(f"held-out perplexity {result.perplexity:.4f} (loss {result.loss:.4f} nats over "
              f"{result.tokens} tokens, vocab {result.vocab_size})" + (f" under {args.plan}" if args.plan else "") + (f" of {args.onnx} in ONNX Runtime" if args.onnx else "")
              + (", one token at a time" if args.stepwise else ""))
    return 0
