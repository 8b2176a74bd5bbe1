"""Compile the grouped-MoE kernels ahead of time, exactly as the launcher launches them.

`record_launches` runs the launcher with its six kernels swapped for recorders: every launch's
kernel, grid, arguments and options are captured and nothing runs (the launcher never reads a
device result between launches, so recording needs no GPU and no interpreter).
`compile_launch` turns one recorded launch into PTX and a cubin for a GPU architecture with
Triton's own compiler, giving it the specialisations Triton's JIT would make at run time
(16-byte aligned pointers, integers divisible by 16, integers equal to 1 folded), without
which the GEMMs lose their pipelined loads. The TensorRT plugin (#7) embeds these with the
grids of `launch_plan.LaunchPlan`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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


@functools.cache
def _compilable_kernels():
    """kernels.py as JIT functions (under TRITON_INTERPRET=1 the imported module holds interpreted ones)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return kernels
    spec = importlib.util.spec_from_file_location(f"{kernels.__name__}_aot", kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ["TRITON_INTERPRET"] = "1"
    return module


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


def compile_launch(launch: Launch, arch: int = 90, source: Callable | None = None):
    """Triton's CompiledKernel for `launch` on sm_<arch>: `.asm["ptx"]`, `.asm["cubin"]`, `.metadata`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(source or _compilable_kernels(), launch.name)
    signature, constexprs, attrs = signature_of(launch)
    ordered = {name: signature[name] for name in fn.arg_names}
    return triton.compile(ASTSource(fn, ordered, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options=launch.options)
