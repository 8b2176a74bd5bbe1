"""Find the fastest launch configuration per token count on this GPU; write the JSON table.

    python -m moe_compile.plugins.grouped_moe.tune --experts 60 --hidden 2048 --inter 1408 --top-k 4

For each token count, every candidate configuration runs the whole op on seeded bf16 inputs;
a candidate whose output differs from the default configuration's (beyond bf16 round-off), or
that does not fit the device (shared memory, registers), is dropped; the rest are timed from a
CUDA graph. The winners go to configs/E=..,N=..,device_name=...json, which `lookup_config`
reads. Run it on the device the table is for.

`--max-seconds` bounds the search: each token count gets an equal share of the time, tries the
default config first and then the others in a seeded random order until its share is spent, so
a short search samples the whole space instead of one corner of it. `--dry-run` runs the same
search on CPU in Triton's interpreter (TRITON_INTERPRET=1), fp32, timed by the host clock.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from moe_compile.errors import BackendUnavailable

from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes
from .configs import CONFIG_DIR, KernelConfig, config_file_name, default_config, write_table

TOKEN_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class Shape:
    experts: int
    hidden: int
    inter: int
    top_k: int


def search_space(quick: bool = False) -> list[KernelConfig]:
    """Block sizes, warps and stages to try; `quick` keeps the usual winners only."""
    if quick:
        grid = ((16, 32, 64, 128), (64, 128), (64, 128), (4, 8), (3, 4), (1, 8))
    else:
        grid = ((16, 32, 64, 128), (32, 64, 128, 256), (32, 64, 128, 256), (4, 8), (2, 3, 4, 5), (1, 8, 16))
    return [KernelConfig(*values) for values in itertools.product(*grid)]


def candidates_for(tokens: int, shape: Shape, space: Iterable[KernelConfig]) -> list[KernelConfig]:
    """Drop row blocks far taller than the rows an expert gets on average: they only compute padding."""
    rows = max(1, tokens * shape.top_k // shape.experts)
    return [c for c in space if c.BLOCK_M <= max(16, 4 * rows)]


def make_inputs(tokens: int, shape: Shape, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    e, h, i = shape.experts, shape.hidden, shape.inter
    return {"hidden": torch.randn(tokens, h, generator=g, device=device).to(dtype),
            "router_logits": torch.randn(tokens, e, generator=g, device=device),
            "w_gate_up": (torch.randn(e, 2 * i, h, generator=g, device=device) / h ** 0.5).to(dtype),
            "w_down": (torch.randn(e, h, i, generator=g, device=device) / i ** 0.5).to(dtype)}


def search_order(tokens: int, shape: Shape, space: Iterable[KernelConfig]) -> list[KernelConfig]:
    """The default config, then the other candidates in a random order seeded by the token count."""
    default = default_config(tokens, shape.experts, shape.top_k)
    others = [c for c in candidates_for(tokens, shape, space) if c != default]
    random.Random(tokens).shuffle(others)
    return [default, *others]


def tune(shape: Shape, token_counts: Iterable[int], space: list[KernelConfig], measure: Callable,
         device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
         on_result: Callable[[int, KernelConfig, float], None] | None = None,
         max_seconds: float | None = None) -> dict[int, KernelConfig]:
    """{token count: fastest correct config}; `measure(fn)` times a callable in microseconds.
    With `max_seconds`, each token count stops trying candidates once its share is spent."""
    from triton.runtime.errors import OutOfResources

    from .launcher import grouped_moe_triton

    attrs = GroupedMoEAttributes(top_k=shape.top_k)
    token_counts = list(token_counts)
    started = time.monotonic()
    table = {}
    for index, tokens in enumerate(token_counts):
        stop = None if max_seconds is None else started + max_seconds * (index + 1) / len(token_counts)
        inputs = make_inputs(tokens, shape, device, dtype)
        want = grouped_moe_triton(**inputs, attrs=attrs, config=default_config(tokens, shape.experts, shape.top_k))
        tolerance = 4e-2 * want.float().abs().max().item() if dtype != torch.float32 else 1e-4
        best = None
        for config in search_order(tokens, shape, space):
            if best is not None and stop is not None and time.monotonic() > stop:
                break
            def run(config=config, inputs=inputs):
                return grouped_moe_triton(**inputs, attrs=attrs, config=config)
            try:
                if (run().float() - want.float()).abs().max().item() > tolerance:
                    continue
                time_us = measure(run)
            except OutOfResources:  # more shared memory or registers than the device has
                continue
            if best is None or time_us < best[1]:
                best = (config, time_us)
        table[tokens] = best[0]
        if on_result:
            on_result(tokens, *best)
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m moe_compile.plugins.grouped_moe.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--inter", type=int, required=True, help="intermediate size of one expert (N)")
    parser.add_argument("--top-k", type=int, required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKEN_COUNTS))
    parser.add_argument("--quick", action="store_true", help="a smaller search space (128 configs)")
    parser.add_argument("--max-seconds", type=float, help="bound the whole search (shared among the token counts)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: the same search on CPU in Triton's interpreter (TRITON_INTERPRET=1), fp32")
    parser.add_argument("--out-dir", type=Path, default=CONFIG_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    from rich.console import Console
    from rich.progress import Progress

    from .launcher import device_name
    from .timing import cuda_graph_us, wall_us

    args = parse_args(argv)
    if args.dry_run:
        device, dtype, measure = "cpu", torch.float32, wall_us
    elif torch.cuda.is_available():
        device, dtype, measure = "cuda", torch.bfloat16, cuda_graph_us
    else:
        raise BackendUnavailable("tuning needs a CUDA GPU: run it on the device the table is for")
    shape = Shape(args.experts, args.hidden, args.inter, args.top_k)
    console = Console(stderr=True)
    with Progress(console=console) as progress:
        task = progress.add_task("tuning", total=len(args.tokens))

        def report(tokens, config, time_us):
            progress.advance(task)
            console.print(f"T={tokens}: {time_us:.1f} us  {config.as_dict()}")

        table = tune(shape, args.tokens, search_space(args.quick), measure, device=device, dtype=dtype,
                     on_result=report, max_seconds=args.max_seconds)
    path = args.out_dir / config_file_name(shape.experts, shape.inter, device_name(torch.device(device)))
    write_table(path, table)
    console.print(f"wrote {path}")
    return path


if __name__ == "__main__":
    import sys

    from moe_compile.errors import MoeCompileError, one_line

    try:
        main()
    except MoeCompileError as exc:
        print(f"tune: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
