"""Run one layer's six stages in order on torch tensors, as the engine runs its six plugin nodes.

The stage tensors are allocated from the shapes of stages.py evaluated for the actual T, and
each stage's kernel gets its inputs, ints and outputs in the order TensorRT passes them. How a
stage is launched is the caller's: `triton_launch` (Triton's JIT, or its CPU interpreter in the
tests) or benchmarks/aot_check.py's launch of the ahead-of-time PTX through the CUDA driver.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moe_compile.dtypes import element_type
from moe_compile.plugins.grouped_moe.configs import KernelConfig

from .stages import GEMM_STAGES, NODE_INPUTS, NODE_OUTPUT, STAGES, Stage, StageLaunch, StageLayer

StageLauncher = Callable[[StageLaunch, list], None]


def node_tensors(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The node's inputs as the expanded graph feeds the stages: an absent optional one replaced
    by its one-element stand-in (stages.NODE_INPUTS), the router logits cast to fp32."""
    hidden = inputs["hidden"]
    tensors = {name: inputs[name].contiguous() if inputs.get(name) is not None
               else torch.zeros(1, dtype=hidden.dtype, device=hidden.device) for name in NODE_INPUTS}
    return {**tensors, "router_logits": tensors["router_logits"].float()}


def run_stage(layer: StageLayer, stage: Stage, tensors: dict[str, torch.Tensor], act_dtype: torch.dtype,
              launch: StageLauncher, gemm_config: KernelConfig | None = None) -> None:
    """One stage: its outputs allocated (as TensorRT allocates a layer's outputs) and added to
    `tensors`, which holds its inputs by stage tensor name; T from its token input."""
    first = tensors[stage.token_input]
    stage_launch = layer.launch(stage, layer.tokens(stage, first.shape[0]), fp32=act_dtype == torch.float32,
                                config=gemm_config if stage.launch in GEMM_STAGES else None)
    for name, (shape, dtype) in stage_launch.outputs.items():
        tensors[name] = torch.empty(shape, dtype=act_dtype if dtype == "act" else element_type(torch=dtype).torch,
                                    device=first.device)
    launch(stage_launch, [*(tensors[name] for name in stage_launch.inputs), *stage_launch.ints.values(),
                          *(tensors[name] for name in stage_launch.outputs)])


def run_stages(layer: StageLayer, inputs: dict[str, torch.Tensor], launch: StageLauncher,
               gemm_config: KernelConfig | None = None) -> torch.Tensor:
    """The layer's output [T, H] for `inputs` (GroupedMoE's input names; the router logits in any
    float dtype, the others in the activations')."""
    tensors = node_tensors(inputs)
    for stage in STAGES:
        run_stage(layer, stage, tensors, tensors["hidden"].dtype, launch, gemm_config)
    return tensors[NODE_OUTPUT]


def triton_launch(launch: StageLaunch, args: list) -> None:
    """Launch a stage's kernel with Triton's JIT (the interpreter under TRITON_INTERPRET=1)."""
    from moe_compile.plugins.grouped_moe import kernels

    kernel = getattr(kernels, launch.stage.kernel)
    kernel[launch.grid](*args, *(None for _ in launch.stage.unused), **launch.constexprs, **launch.options)
