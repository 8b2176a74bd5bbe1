"""Compile the grouped-MoE kernels ahead of time, exactly as the launcher launches them.

`record_launches` runs the launcher with its six kernels swapped for recorders: every launch's
kernel, grid, arguments and options are captured and nothing runs (the launcher never reads a
device result between launches, so recording needs no GPU and no interpreter).
`compile_launch` turns one recorded launch into PTX and a cubin for a GPU architecture with
Triton's own compiler, giving it the specialisations Triton's JIT would make at run time
(16-byte aligned pointers, integers divisible by 16, integers equal to 1 folded), without
which the GEMMs lose their pipelined loads. This is the launcher's view (any T, the decode
shortcut included); the TensorRT plugins compile their six stages, T symbolic, with the same
rule in plugins/tensorrt/aot_kernel.py, and tests check both against the launcher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from moe_compile.dtypes import PRECISIONS, torch_dtype

from . import kernels

KERNELS = ("_route_kernel", "_scan_kernel", "_scatter_kernel", "_gate_up_kernel", "_down_kernel", "_combine_kernel")
_OPTIONS = ("num_warps", "num_stages")


@dataclass
class Launch:
    name: str
    grid: tuple[int, ...]
    args: dict[str, object]  # runtime arguments by parameter name (tensors, ints, floats)
    constexprs: dict[str, object]
    options: dict[str, int] = field(default_factory=dict)


class _Recorder:
    def __init__(self, name: str, fn, launches: list[Launch]):
        self.name, self.fn, self.launches = name, fn, launches

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
            names = self.fn.arg_names
            self.launches.append(Launch(self.name, tuple(grid), dict(zip(names, args)), kwargs, options))
        return record


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Within the block, launcher calls record their kernel launches into the yielded list."""
    launches: list[Launch] = []
    saved = {name: getattr(kernels, name) for name in KERNELS}
    try:
        for name, fn in saved.items():
            setattr(kernels, name, _Recorder(name, fn, launches))
        yield launches
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)


def signature_of(launch: Launch) -> tuple[dict[str, str], dict[str, object], dict[tuple[int, ...], list]]:
    """(Triton signature, constexprs, attributes): the values specialised by Triton's own JIT rule."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    signature, constexprs, attrs = {}, dict(launch.constexprs), {}
    for index, (name, value) in enumerate(launch.args.items()):
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = key
        elif key == "D":  # divisible by 16 (a pointer: 16-byte aligned)
            attrs[(index,)] = [["tt.divisibility", 16]]
    for name in launch.constexprs:
        signature[name] = "constexpr"
    return signature, constexprs, attrs


def compile_launch(launch: Launch, arch: int = 90):
    """Triton's CompiledKernel for `launch` on sm_<arch>: `.asm["ptx"]`, `.asm["cubin"]`, `.metadata`.

    Needs a process where TRITON_INTERPRET is off: the interpreter leaves triton.language patched.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile ahead of time in a process without TRITON_INTERPRET=1")
    fn = getattr(kernels, launch.name)
    signature, constexprs, attrs = signature_of(launch)
    ordered = {name: signature[name] for name in fn.arg_names}
    return triton.compile(ASTSource(fn, ordered, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options=launch.options)


def write_artefacts(launches: list[Launch], out: Path, arch: int = 90) -> dict:
    """PTX and cubin of every launch under `out`, with manifest.json describing how to launch them."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"arch": f"sm_{arch}", "kernels": []}
    for launch in launches:
        compiled = compile_launch(launch, arch)
        stem = launch.name.strip("_")
        (out / f"{stem}.ptx").write_text(compiled.asm["ptx"])
        (out / f"{stem}.cubin").write_bytes(compiled.asm["cubin"])
        signature, constexprs, _ = signature_of(launch)
        manifest["kernels"].append({
            "name": compiled.metadata.name, "kernel": launch.name, "grid": list(launch.grid),
            "signature": {k: v for k, v in signature.items() if v != "constexpr"}, "constexprs": constexprs,
            "num_warps": compiled.metadata.num_warps, "num_stages": compiled.metadata.num_stages,
            "shared_bytes": compiled.metadata.shared, "ptx": f"{stem}.ptx", "cubin": f"{stem}.cubin"})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> dict:
    """python -m moe_compile.plugins.grouped_moe.aot --experts 60 --hidden 2048 --inter 1408 --top-k 4 --out DIR"""
    import torch

    from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes
    from .configs import default_config
    from .launcher import grouped_moe_triton

    parser = argparse.ArgumentParser(prog="python -m moe_compile.plugins.grouped_moe.aot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--experts", "--hidden", "--inter", "--top-k"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64, help="token count the config and grids are for")
    parser.add_argument("--dtype", choices=PRECISIONS, default="bf16")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    dtype = torch_dtype(args.dtype)
    e, h, i, t = args.experts, args.hidden, args.inter, args.tokens
    with record_launches() as launches:  # empty CPU tensors: only their dtypes, strides, alignment matter
        grouped_moe_triton(torch.empty(t, h, dtype=dtype), torch.empty(t, e), torch.empty(e, 2 * i, h, dtype=dtype),
                           torch.empty(e, h, i, dtype=dtype), GroupedMoEAttributes(top_k=args.top_k),
                           config=default_config(t, e, args.top_k))
    manifest = write_artefacts(launches, args.out, args.arch)
    print(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    main()
