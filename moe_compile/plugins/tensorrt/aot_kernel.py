"""One stage's kernel compiled ahead of time, with the launch parameters TensorRT gets for it.

This is the body of the plugins' `aot_impl` (plugin.py), kept free of TensorRT so that tests and
benchmarks/aot_check.py produce exactly what TensorRT is handed: the PTX and its entry name,
the grid (expressions in T), block size, shared memory, and the int32 arguments TensorRT
passes between the input and the output pointers.

Specialisation follows Triton's JIT rule (aot.py) where values are known at build time:
pointers are 16-byte aligned (TensorRT's allocations are), constant ints equal to 1 become
constexprs (so they are not kernel parameters; a stride of 1 must be, or the GEMM loads are
not vectorised) and constant ints divisible by 16 are marked so. Ints that depend on T are
plain i32: the engine serves every T of its profile with one PTX.

Triton appends two pointer parameters of its own (global and profile scratch) that TensorRT
does not pass. Our kernels need neither (`scratch_bytes` == 0), so `drop_scratch_parameters`
removes them from the PTX entry, after checking the body never reads them: the PTX then
declares exactly the parameters TensorRT passes, and the driver reads nothing past them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from moe_compile.dtypes import element_type
from moe_compile.plugins.grouped_moe.configs import KernelConfig
from moe_compile.plugins.grouped_moe.launch_plan import SizeOps

from .stages import GEMM_STAGES, Stage, StageLaunch, StageLayer



@dataclass(frozen=True)
class StageKernel:
    kernel_name: str  # the PTX entry
    ptx: str
    grid: tuple  # (x, y, z): ints or expressions in T
    block: int  # threads per program
    shared_mem: int  # bytes of dynamic shared memory
    extra_args: tuple  # the int32 arguments between the input and the output pointers
    params: tuple[str, ...]  # what TensorRT passes, in order: pipeline tensors and int parameters by name;
    # exactly the PTX entry's parameters


def _pointer(dtype: str, act_dtype: str) -> str:
    return "*" + element_type(torch=act_dtype if dtype == "act" else dtype).short  # Triton's pointer type


def triton_source_parts(launch: StageLaunch, act_dtype: str) -> tuple[dict, dict, dict, tuple[str, ...]]:
    """(signature, constexprs, attributes, what TensorRT passes) for Triton's ASTSource; the last
    names, in order, the pipeline tensor of each pointer and the kernel's name of each int.

    The kernel's parameters are, in order: launch.inputs, launch.ints, launch.outputs,
    stage.unused, constexprs (stages.py; kernels.py keeps that order).
    """
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    from moe_compile.plugins.grouped_moe import kernels

    names = getattr(kernels, launch.stage.kernel).arg_names
    n_in, n_int, n_out = len(launch.inputs), len(launch.ints), len(launch.outputs)
    tensors = [*launch.inputs.items(), *launch.outputs.items()]  # (name, (shape, dtype))
    pointer_at = [*range(n_in), *range(n_in + n_int, n_in + n_int + n_out)]
    signature, constexprs, attrs, passed = {}, dict(launch.constexprs), {}, []
    for index, name in enumerate(names):
        if index in pointer_at:
            tensor, (_, dtype) = tensors[pointer_at.index(index)]
            signature[name] = _pointer(dtype, act_dtype)
            attrs[(index,)] = [["tt.divisibility", 16]]
            passed.append(tensor)
        elif index < n_in + n_int:
            value = launch.ints[name]  # a KeyError here: stages.py and kernels.py disagree
            kind, key = ("i32", None) if not isinstance(value, int) else \
                native_specialize_impl(BaseBackend, value, False, True, True)
            signature[name] = kind
            if kind == "constexpr":
                constexprs[name] = key
                continue
            passed.append(name)
            if key == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in launch.stage.unused:
            signature[name], constexprs[name] = "constexpr", None
        else:
            signature[name] = "constexpr"
    return signature, constexprs, attrs, tuple(passed)


def compile_stage(launch: StageLaunch, act_dtype: str, arch: int = 90) -> StageKernel:
    """Compile `launch`'s kernel for sm_<arch>. Needs a process without TRITON_INTERPRET=1 (aot.py)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from moe_compile.plugins.grouped_moe import kernels

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile ahead of time in a process without TRITON_INTERPRET=1")
    signature, constexprs, attrs, params = triton_source_parts(launch, act_dtype)
    fn = getattr(kernels, launch.stage.kernel)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                              options=launch.options)
    meta = compiled.metadata
    scratch_bytes = meta.global_scratch_size + getattr(meta, "profile_scratch_size", 0)
    if scratch_bytes:
        raise RuntimeError(f"{meta.name} needs {scratch_bytes} bytes of Triton scratch, which TensorRT cannot give")
    return StageKernel(kernel_name=meta.name, ptx=drop_scratch_parameters(compiled.asm["ptx"], meta.name, len(params)),
                       grid=(*launch.grid, 1, 1)[:3], block=meta.num_warps * 32, shared_mem=meta.shared,
                       extra_args=tuple(launch.ints[name] for name in params if name in launch.ints), params=params)


def entry_parameters(ptx: str, name: str) -> list[str]:
    """The parameter declarations of PTX entry `name`, one line each, in order."""
    entry = re.search(rf"\.entry {re.escape(name)}\((.*?)\)", ptx, re.DOTALL)
    if entry is None:
        raise ValueError(f"no entry {name} in the PTX")
    return [line.strip().rstrip(",") for line in entry.group(1).splitlines() if line.strip()]


def drop_scratch_parameters(ptx: str, name: str, passed: int) -> str:
    """`ptx` with entry `name` declaring only its first `passed` parameters.

    The others are Triton's scratch pointers; each must be unread in the body (else ValueError).
    """
    declared = entry_parameters(ptx, name)
    dropped = [line.split()[-1] for line in declared[passed:]]
    if read := [param for param in dropped if f"[{param}]" in ptx]:
        raise ValueError(f"{name} reads parameters beyond the {passed} TensorRT passes: {read}")
    declaration = ",\n".join(f"\t{line}" for line in declared[:passed])
    return re.sub(rf"(\.entry {re.escape(name)}\().*?\)", lambda m: f"{m.group(1)}\n{declaration}\n)", ptx,
                  count=1, flags=re.DOTALL)


def gemm_tactics(layer: StageLayer, device_name: str | None) -> list[KernelConfig]:
    """The GEMM kernel configs tactic 1, 2, ... stand for (StageLayer.gemm_configs, with the
    device's tuned table if it has one)."""
    from moe_compile.plugins.grouped_moe.configs import tuned_table

    return layer.gemm_configs(tuned_table(layer.experts, layer.inter, device_name) if device_name else None)


def stage_kernel(stage: Stage, layer: StageLayer, tokens, act_dtype: str, tactic: int, ops: SizeOps, arch: int,
                 device_name: str | None) -> StageKernel:
    """The plugins' aot_impl: the stage's kernel for activations `act_dtype` and `tactic`, with T
    the symbolic `tokens` (combined by `ops`), compiled for sm_<arch>."""
    config = None
    if stage.launch in GEMM_STAGES:
        config = gemm_tactics(layer, device_name)[max(tactic, 1) - 1]  # tactic 0, TensorRT's default: the first
    launch = layer.launch(stage, tokens, fp32=act_dtype == "float32", config=config, ops=ops)
    return compile_stage(launch, act_dtype, arch)


def device_name() -> str | None:
    """The current CUDA device's name (the tuned tables are per device), None without one."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def current_arch() -> int:
    from triton.runtime import driver

    return driver.active.get_current_target().arch
