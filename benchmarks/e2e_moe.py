"""End to end in PyTorch: a few real-shaped MoE layers run with the GroupedMoE op, base top-k vs a 75 % plan.

A Qwen3-30B-A3B-shaped decoder (its real layer shape: hidden 2048, 128 experts of 768, top-8,
32/4 heads of 128, its vocabulary) with only `--layers` layers and random weights, built by
transformers and rewritten as `moe-compile` rewrites a model: every MoE block becomes a
`StaticTopKMoE` (compiler/rewrite.static_block) calling `moe_compile::grouped_moe`, which runs
the Triton kernels on CUDA. First each rewritten block, at the base top-k, is checked against the
transformers block it replaces on the hidden states that block saw (largest difference over the
block output's largest magnitude, over the tokens both route alike: `block_parity`). A
whole-model comparison is reported beside it, not judged: in bf16 a tie in the router's scores
sends a token to another expert and the difference grows layer after layer. Then, bf16, for the
base top-k and for a plan at 75 % of its sum of k (LExI's shape: layers at 8, 6, 6, 4):

    prefill  one sequence of --prefill-tokens tokens, no cache        -> tokens/s of the model
    decode   --batch sequences, one new token each after --past tokens -> tokens/s of the model

and the MoE layers alone at the same inputs (each block replayed from a CUDA graph on the
hidden states it saw, summed over the layers): `plan_speedup_moe` = base MoE time / plan MoE
time, the issue's target being >= 1.25 at prefill. Model tokens/s are eager transformers
forwards (CUDA events around each call), so decode includes Python and launch overhead.

Writes benchmarks/results/e2e-<device>.json: {"device", "versions", "command", "model", "plans",
"parity", "rows", "summary"}.

    python benchmarks/e2e_moe.py                    # on an H100 / H200
    python benchmarks/e2e_moe.py --dry-run --out X  # CPU: a tiny Qwen3-MoE, fp32, the op's Triton
                                                    # kernels in the interpreter, host wall-clock timing
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from moe_compile.atomic import write_text_atomic
from moe_compile.versions import package_versions

RESULTS = Path(__file__).parent / "results"
QWEN3_30B_A3B = dict(hidden_size=2048, moe_intermediate_size=768, intermediate_size=6144, num_experts=128,
                     num_experts_per_tok=8, norm_topk_prob=True, num_attention_heads=32, num_key_value_heads=4,
                     head_dim=128, vocab_size=151936, decoder_sparse_step=1, max_position_embeddings=32768)
TINY = dict(hidden_size=32, moe_intermediate_size=16, intermediate_size=48, num_experts=8, num_experts_per_tok=4,
            norm_topk_prob=True, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=96,
            decoder_sparse_step=1, max_position_embeddings=128)
PLAN_FRACTIONS = (1.0, 0.75, 0.75, 0.5)  # of the base k, layer by layer (repeated): 75 % of the sum
PARITY_TOLERANCE = {torch.bfloat16: 4e-2, torch.float32: 1e-4}  # of the reference block output's largest magnitude


@dataclass(frozen=True)
class Setting:
    """Everything that differs between the GPU run and the dry run."""

    device: str
    dtype: torch.dtype
    shape: dict
    layers: int
    prefill_tokens: int
    batch: int
    past: int
    time_graph: Callable  # microseconds per call of a capturable callable
    time_eager: Callable  # microseconds per call of any callable


def plan_top_k(base: int, layers: int) -> list[int]:
    """Per-layer k at 75 % of the base sum (exactly, for a multiple of four layers)."""
    return [max(1, round(base * PLAN_FRACTIONS[i % len(PLAN_FRACTIONS)])) for i in range(layers)]


def build_model(setting: Setting, seed: int = 0):
    """The transformers model with random weights (norms near 1, the rest scaled by fan-in)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_moe", num_hidden_layers=setting.layers, **setting.shape)
    torch.manual_seed(seed)
    with torch.device(setting.device):
        model = AutoModelForCausalLM.from_config(config, dtype=setting.dtype, attn_implementation="sdpa")
    generator = torch.Generator(device=setting.device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)
    return model.eval()


def _adapter_and_block_paths(model) -> tuple:
    """The model's adapter and its MoE blocks' module paths, layer by layer."""
    from moe_compile.compiler.adapters import adapter_class

    adapter = adapter_class(model.config.model_type)(model.config)
    return adapter, [adapter.block_path(i) for i in range(model.config.num_hidden_layers) if adapter.is_moe_layer(i)]


def moe_blocks(model) -> list:
    """transformers' own MoE blocks, layer by layer."""
    return [model.get_submodule(path) for path in _adapter_and_block_paths(model)[1]]


def block_calls(blocks: list, run: Callable) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each block in one `run()`."""
    seen = []

    def keep(_module, args, output):
        seen.append((args[0].detach().clone(), (output[0] if isinstance(output, tuple) else output).detach().clone()))

    hooks = [block.register_forward_hook(keep) for block in blocks]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def relative_diff(got, want: torch.Tensor) -> float:
    """Largest |got - want| over want's largest magnitude."""
    got = got[0] if isinstance(got, tuple) else got
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def block_parity(original, block, x: torch.Tensor, want: torch.Tensor) -> dict:
    """The rewritten block against transformers' on the same hidden states, over the tokens both
    route to the same experts. A token whose k-th and (k+1)-th router scores are equal (bf16
    logits tie often among 128 experts) may take either expert: torch.topk and the op's
    lower-index rule both are right, and the outputs then differ by a whole expert's share. Such
    tokens are counted, checked to be ties, and left out of the difference."""
    from moe_compile.grouped_moe_op import route

    h = x.reshape(-1, x.shape[-1])
    logits, _, chosen = original.gate(h)  # transformers' router: softmax in fp32, torch.topk
    _, ours = route(logits.float(), block.attributes)
    same = torch.tensor([set(a) == set(b) for a, b in zip(chosen.tolist(), ours.tolist())], device=h.device)
    scores = logits.float().softmax(-1).sort(-1, descending=True).values
    k = block.attributes.top_k
    tied = scores[:, k - 1] == scores[:, k] if k < scores.shape[-1] else torch.zeros_like(same)
    got = block(x)
    got = (got[0] if isinstance(got, tuple) else got).reshape(-1, h.shape[-1])[same]
    return {"relative_diff": relative_diff(got, want.reshape(-1, h.shape[-1])[same]),
            "tokens": len(same), "tokens_choosing_otherwise": int((~same).sum()),
            "all_of_them_ties": bool(tied[~same].all())}


def rewrite(model) -> list:
    """Swap every MoE block for a StaticTopKMoE at the base k, as compiler/rewrite does; the new blocks."""
    from moe_compile.compiler.rewrite import static_block

    adapter, paths = _adapter_and_block_paths(model)
    blocks = []
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        blocks.append(static_block(adapter, getattr(parent, name), adapter.base_top_k()))
        setattr(parent, name, blocks[-1])
    return blocks


def set_top_k(blocks: list, top_k: list[int]) -> None:
    for block, k in zip(blocks, top_k, strict=True):
        block.attributes = block.attributes.with_top_k(k)


def block_inputs(model, blocks: list, run: Callable) -> list[torch.Tensor]:
    """The hidden states each MoE block receives in the last forward of `run()` (a decode's first
    call also fills the cache)."""
    seen = []
    hooks = [block.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
             for block in blocks]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen[-len(blocks):]


def moe_us(blocks: list, inputs: list[torch.Tensor], setting: Setting) -> float:
    """The MoE layers alone: each block on the hidden states it saw, summed over the layers."""
    return sum(setting.time_graph(lambda block=block, x=x: block(x)) for block, x in zip(blocks, inputs, strict=True))


def cases(model, setting: Setting) -> dict[str, tuple[Callable, Callable]]:
    """name -> (a call that runs the case once, its number of new tokens); decode calls grow the cache."""
    from transformers import DynamicCache

    g = torch.Generator(device=setting.device).manual_seed(2)
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, setting.prefill_tokens), device=setting.device, generator=g)
    past_ids = torch.randint(0, vocab, (setting.batch, setting.past), device=setting.device, generator=g)
    step_ids = torch.randint(0, vocab, (setting.batch, 1), device=setting.device, generator=g)
    state = {}

    def prefill():
        return model(prompt, use_cache=False)

    def decode():
        if "cache" not in state:  # first call: fill the cache with the past tokens
            state["cache"] = DynamicCache(config=model.config)
            model(past_ids, past_key_values=state["cache"], use_cache=True)
        return model(step_ids, past_key_values=state["cache"], use_cache=True)

    return {"prefill": (prefill, setting.prefill_tokens), "decode": (decode, setting.batch)}


def measure(model, blocks: list, plans: dict[str, list[int]], setting: Setting, progress: Callable) -> list[dict]:
    rows = []
    for case, (run, new_tokens) in cases(model, setting).items():
        for plan, top_k in plans.items():
            set_top_k(blocks, top_k)
            with torch.no_grad():
                inputs = block_inputs(model, blocks, run)
                call_us = setting.time_eager(run)
                layers_us = moe_us(blocks, inputs, setting)
            rows.append({"case": case, "plan": plan, "top_k": top_k, "new_tokens_per_call": new_tokens,
                         "model_us": call_us, "tokens_per_s": new_tokens / (call_us * 1e-6), "moe_us": layers_us,
                         "moe_tokens_per_s": new_tokens / (layers_us * 1e-6)})
            progress(rows[-1])
    return rows


def summary(rows: list[dict]) -> dict:
    """Per case: the plan's MoE-layer and whole-model throughput over the base top-k's."""
    out = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        by_plan = {r["plan"]: r for r in rows if r["case"] == case}
        if {"base", "plan"} <= set(by_plan):
            base, plan = by_plan["base"], by_plan["plan"]
            out[case] = {"plan_speedup_moe": base["moe_us"] / plan["moe_us"],
                         "plan_speedup_model": plan["tokens_per_s"] / base["tokens_per_s"]}
    return out | {"target": {"plan_speedup_moe_prefill": 1.25}}


def setting_for(args) -> Setting:
    from moe_compile.plugins.grouped_moe.timing import cuda_graph_us, eager_us, wall_us

    if args.dry_run:
        once = functools.partial(wall_us, warm_up=False)  # the interpreter takes about a second a call
        return Setting("cpu", torch.float32, TINY, layers=2, prefill_tokens=8, batch=2, past=3,
                       time_graph=once, time_eager=once)
    return Setting("cuda", torch.bfloat16, QWEN3_30B_A3B, layers=args.layers, prefill_tokens=args.prefill_tokens,
                   batch=args.batch, past=args.past, time_graph=cuda_graph_us,
                   time_eager=lambda fn: eager_us(fn, reps=3, rounds=3))


def run_op_kernels_on_cpu() -> None:
    """Dry run: the op's CPU calls go to the Triton launcher (in the interpreter), as CUDA calls do."""
    from moe_compile.grouped_moe_op.op import OP_NAME, _grouped_moe_cuda

    torch.library.register_kernel(OP_NAME, "cpu", _grouped_moe_cuda)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (all MoE)")
    parser.add_argument("--prefill-tokens", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16, help="sequences decoding together")
    parser.add_argument("--past", type=int, default=512, help="cached tokens per sequence before the timed steps")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: a tiny model on CPU, Triton's interpreter")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for e2e-<device>.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = "python benchmarks/e2e_moe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        run_op_kernels_on_cpu()
    elif not torch.cuda.is_available():
        print("e2e_moe: error: needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        sys.exit(2)
    setting = setting_for(args)
    device = "dry-run" if args.dry_run else torch.cuda.get_device_name()
    model = build_model(setting)
    base_k = model.config.num_experts_per_tok
    plans = {"base": [base_k] * setting.layers, "plan": plan_top_k(base_k, setting.layers)}
    ids = torch.randint(0, model.config.vocab_size, (1, 64), device=setting.device,
                        generator=torch.Generator(device=setting.device).manual_seed(1))
    originals = moe_blocks(model)
    with torch.no_grad():
        seen = block_calls(originals, lambda: model(ids, use_cache=False))  # transformers' own MoE blocks
        want = model(ids, use_cache=False).logits.float()
        blocks = rewrite(model)
        got = model(ids, use_cache=False).logits.float()  # the GroupedMoE op at the base k
        per_block = [block_parity(original, block, x, y)
                     for original, block, (x, y) in zip(originals, blocks, seen, strict=True)]
    tolerance = PARITY_TOLERANCE[setting.dtype]
    logits_diff = relative_diff(got, want)
    passed = all(b["relative_diff"] <= tolerance and b["all_of_them_ties"] for b in per_block)
    report = {"device": device, "versions": package_versions("torch", "triton", "transformers"), "command": command,
              "model": {"shape": "qwen3-30b-a3b" if not args.dry_run else "tiny-qwen3-moe", "layers": setting.layers,
                        **{k: setting.shape[k] for k in ("hidden_size", "moe_intermediate_size", "num_experts")},
                        "dtype": str(setting.dtype).removeprefix("torch."), "prefill_tokens": setting.prefill_tokens,
                        "decode_batch": setting.batch, "decode_past": setting.past},
              "plans": plans | {"plan_fraction_of_base_sum_k": sum(plans["plan"]) / sum(plans["base"])},
              "parity": {"tokens": 64, "tolerance": tolerance, "per_block": per_block,
                         "logits": logits_diff, "passed": passed},
              "rows": [], "summary": {}}
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = args.out / f"e2e-{slug}.json"

    def progress(row: dict) -> None:
        report["rows"].append(row)
        report["summary"] = summary(report["rows"])
        print(json.dumps(row), file=sys.stderr)
        write_text_atomic(path, json.dumps(report, indent=2) + "\n")

    write_text_atomic(path, json.dumps(report, indent=2) + "\n")
    measure(model, blocks, plans, setting, progress)
    print(json.dumps(report, indent=2))
    if not report["parity"]["passed"]:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
