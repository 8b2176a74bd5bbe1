"""The TensorRT plugins' AOT kernels, launched as the engine launches them, against the reference (issue #7, 4a).

For each layer below, every stage's kernel is built by the plugins' own aot_impl body
(`plugins.tensorrt.aot_kernel.stage_kernel`, T symbolic, this GPU's arch): PTX, entry name,
grid and int32 arguments as expressions in T. The PTX is loaded with the CUDA driver
(cuda-python: cuModuleLoadData, cuModuleGetFunction) and the six stages are launched in order
with cuLaunchKernel, with exactly the parameters TensorRT passes: input pointers, the extra
int32 arguments evaluated for T, output pointers; nothing more (aot_kernel.py drops the two
scratch parameters Triton appends, which the kernels never read).
Stage tensors are allocated by `plugins.tensorrt.pipeline.run_stages` from stages.py's shapes,
as TensorRT allocates the tensors between plugin layers. Each output is compared with the
PyTorch reference (NaN rows included); more than 48 KiB of shared memory is opted into with
cuFuncSetAttribute, as Triton's own loader does.

Writes benchmarks/results/aot-<device>.json: {"device", "versions", "command", "cases",
"max_abs_diff", "tolerance"}; max_abs_diff and tolerance are relative to the largest magnitude
of each case's reference output, per dtype.

    python benchmarks/aot_check.py                     # on an H100 / H200 (pip install cuda-python)
    python benchmarks/aot_check.py --dry-run --out X   # CPU: compile for sm_90 and build every
                                                       # launch's parameters, launch nothing
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from moe_compile.atomic import write_text_atomic
from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference
from moe_compile.plugins.tensorrt.aot_kernel import (StageKernel, current_arch, device_name, entry_parameters,
                                                     stage_kernel)
from moe_compile.plugins.tensorrt.pipeline import run_stages
from moe_compile.plugins.tensorrt.stages import GEMM_STAGES, STAGES, StageLaunch, StageLayer, engine_block_m
from moe_compile.plugins.tensorrt.symbolic import SYM_OPS, Sym, evaluate
from moe_compile.versions import package_versions

RESULTS = Path(__file__).parent / "results"
TOLERANCE = {"bfloat16": 4e-2, "float32": 2e-5}  # of the reference output's largest magnitude
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_SHARED_LIMIT = 48 * 1024


@dataclass(frozen=True)
class Layer:
    name: str
    experts: int
    hidden: int
    inter: int
    attrs: GroupedMoEAttributes
    dtype: str
    tokens: tuple[int, ...]
    biases: bool = False
    score_bias: bool = False
    nan_rows: bool = False  # poison a few tokens' inputs: their rows must come out NaN

    def stage_layer(self) -> StageLayer:
        block_m = engine_block_m(self.experts, self.attrs.top_k, max(self.tokens))  # as expand.py
        return StageLayer(self.attrs, self.experts, self.hidden, self.inter, block_m,
                          has_score_bias=self.score_bias, has_gate_up_bias=self.biases, has_down_bias=self.biases)


LAYERS = (
    Layer("qwen1.5-moe-a2.7b", 60, 2048, 1408, GroupedMoEAttributes(top_k=4), "bfloat16", (1, 7, 64, 512, 4096)),
    Layer("deepseek-v3-routing", 64, 1024, 512,
          GroupedMoEAttributes(top_k=8, scoring="sigmoid", normalize_topk=True, routed_scaling=2.5, n_group=8,
                               topk_group=4, group_scoring="sum_top2"), "bfloat16", (1, 33, 300, 2048),
          score_bias=True, nan_rows=True),
    Layer("gpt-oss-swiglu-biases", 32, 768, 384, GroupedMoEAttributes(top_k=4, activation="swiglu_clamp"),
          "bfloat16", (3, 100, 1000), biases=True),
    Layer("small-fp32", 8, 256, 128, GroupedMoEAttributes(top_k=2, activation="gelu_glu"), "float32", (1, 17)),
)


def compile_layer(layer: Layer, arch: int, device: str | None) -> dict[str, StageKernel]:
    """Every stage's kernel exactly as the plugins' aot_impl builds it (tactic 1 for the GEMMs)."""
    return {stage.plugin: stage_kernel(stage, layer.stage_layer(), Sym.tokens(), layer.dtype, tactic=1,
                                       ops=SYM_OPS, arch=arch, device_name=device) for stage in STAGES}


def kernel_params(kernel: StageKernel, launch: StageLaunch, args: list, tokens: int) -> tuple[list, list]:
    """(values, ctypes types) of one launch, in TensorRT's order; the extra ints are the kernel's
    expressions evaluated for T, which must be the stage's own ints (minus those folded to 1)."""
    pointers = [*args[:len(launch.inputs)], *args[len(args) - len(launch.outputs):]]
    extra = [evaluate(value, tokens) for value in kernel.extra_args]
    expected = [value for name, value in launch.ints.items() if name in kernel.params]
    if extra != expected:
        raise AssertionError(f"{launch.stage.plugin}: extra args {extra} != stage ints {expected}")
    values = [t.data_ptr() for t in pointers[:len(launch.inputs)]] + extra \
        + [t.data_ptr() for t in pointers[len(launch.inputs):]]
    types = [ctypes.c_void_p] * len(launch.inputs) + [ctypes.c_int32] * len(extra) \
        + [ctypes.c_void_p] * len(launch.outputs)
    return values, types


class DriverLauncher:
    """Loads each stage's PTX once; launches a stage through the CUDA driver on torch's stream."""

    def __init__(self, kernels: dict[str, StageKernel]):
        from cuda.bindings import driver

        self.driver, self.kernels, self.functions = driver, kernels, {}
        self._check(driver.cuInit(0))
        # The driver API needs a current context, and torch makes its own current only at its
        # first CUDA call: make the device's primary context (the one torch uses) current here.
        device = self._check(driver.cuDeviceGet(torch.cuda.current_device()))
        self._check(driver.cuCtxSetCurrent(self._check(driver.cuDevicePrimaryCtxRetain(device))))
        for plugin, kernel in kernels.items():
            module = self._check(driver.cuModuleLoadData(kernel.ptx.encode() + b"\0"))
            function = self._check(driver.cuModuleGetFunction(module, kernel.kernel_name.encode()))
            if kernel.shared_mem > DEFAULT_SHARED_LIMIT:
                attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
                self._check(driver.cuFuncSetAttribute(function, attribute, kernel.shared_mem))
            self.functions[plugin] = function

    def _check(self, result):
        error, *values = result
        if error != self.driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver error {error}")
        return values[0] if values else None

    def launch(self, launch: StageLaunch, args: list, tokens: int) -> None:
        kernel = self.kernels[launch.stage.plugin]
        values, types = kernel_params(kernel, launch, args, tokens)
        holders = [kind(value) for value, kind in zip(values, types, strict=True)]
        pointers = (ctypes.c_void_p * len(holders))(*(ctypes.addressof(h) for h in holders))
        grid = [evaluate(g, tokens) for g in kernel.grid]
        stream = self.driver.CUstream(torch.cuda.current_stream().cuda_stream)
        self._check(self.driver.cuLaunchKernel(self.functions[launch.stage.plugin], *grid, kernel.block, 1, 1,
                                               kernel.shared_mem, stream, ctypes.addressof(pointers), 0))


def make_inputs(layer: Layer, tokens: int, device: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    e, h, i = layer.experts, layer.hidden, layer.inter
    x = {"hidden": torch.randn(tokens, h, generator=g), "router_logits": torch.randn(tokens, e, generator=g),
         "w_gate_up": torch.randn(e, 2 * i, h, generator=g) / h ** 0.5,
         "w_down": torch.randn(e, h, i, generator=g) / i ** 0.5}
    if layer.biases:
        x.update(b_gate_up=torch.randn(e, 2 * i, generator=g) * 0.1, b_down=torch.randn(e, h, generator=g) * 0.1)
    if layer.score_bias:
        x["score_bias"] = torch.randn(e, generator=g) * 0.3
    if layer.nan_rows:
        x["hidden"][tokens // 2, 0] = float("nan")
        x["router_logits"][tokens - 1, -1] = float("inf")
    return {name: t.to(device, DTYPES[layer.dtype]) for name, t in x.items()}


def run_case(layer: Layer, tokens: int, kernels: dict[str, StageKernel], launcher, device: str) -> dict:
    """One layer at one T through the six stages; None results on a dry run (nothing launched)."""
    inputs = make_inputs(layer, tokens, device, seed=tokens)
    launches = []

    def launch(stage_launch: StageLaunch, args: list) -> None:
        kernel_params(kernels[stage_launch.stage.plugin], stage_launch, args, tokens)  # checks the extra args
        launches.append(stage_launch.stage.plugin)
        if launcher is not None:
            launcher.launch(stage_launch, args, tokens)

    config = layer.stage_layer().gemm_configs()[0]  # tactic 1
    got = run_stages(layer.stage_layer(), inputs, launch, gemm_config=config)
    case = {"layer": layer.name, "tokens": tokens, "dtype": layer.dtype, "launches": launches}
    if launcher is None:
        return case | {"max_abs_diff": None, "scale": None, "nan_rows_match": None, "passed": None}
    torch.cuda.synchronize()
    want = grouped_moe_reference(**inputs, attrs=layer.attrs)
    nan_rows_match = torch.equal(got.isnan().all(dim=1), want.isnan().all(dim=1))
    diff = (got.float() - want.float()).nan_to_num().abs().max().item()
    scale = want.float().nan_to_num().abs().max().item() or 1.0
    return case | {"max_abs_diff": diff, "scale": scale, "nan_rows_match": nan_rows_match,
                   "passed": nan_rows_match and diff <= TOLERANCE[layer.dtype] * scale}


def versions() -> dict:
    return package_versions("triton", "cuda-python", "cuda-bindings")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", choices=[layer.name for layer in LAYERS],
                        default=[layer.name for layer in LAYERS])
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: compile for sm_90 and build every launch's parameters; launch nothing")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for aot-<device>.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = "python benchmarks/aot_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.dry_run:
        device, arch, gpu_name, torch_device = "dry-run", 90, None, "cpu"
    elif not torch.cuda.is_available():
        print("aot_check: error: needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        sys.exit(2)
    else:
        device, arch, gpu_name, torch_device = torch.cuda.get_device_name(), current_arch(), device_name(), "cuda"
    cases = []
    for layer in (layer for layer in LAYERS if layer.name in args.layers):
        kernels = compile_layer(layer, arch, gpu_name)
        for plugin, kernel in kernels.items():
            if len(entry_parameters(kernel.ptx, kernel.kernel_name)) != len(kernel.params):
                raise AssertionError(f"{layer.name}/{plugin}: the PTX does not take what TensorRT passes")
        launcher = None if args.dry_run else DriverLauncher(kernels)
        for tokens in layer.tokens:
            cases.append(run_case(layer, tokens, kernels, launcher, torch_device))
            print(json.dumps(cases[-1]), file=sys.stderr)
    measured = [c for c in cases if c["max_abs_diff"] is not None]
    report = {"device": device, "versions": versions(), "command": command, "cases": cases,
              "max_abs_diff": max((c["max_abs_diff"] / c["scale"] for c in measured), default=None),
              "tolerance": TOLERANCE, "stages": [stage.plugin for stage in STAGES],
              "gemm_stages": list(GEMM_STAGES)}
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    write_text_atomic(args.out / f"aot-{slug}.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if measured and not all(c["passed"] for c in measured):
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
