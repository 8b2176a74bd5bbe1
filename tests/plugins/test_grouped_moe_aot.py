"""The kernels compiled ahead of time for sm_90 on this CPU machine, as the launcher launches them.

This is the GPU compiler path (Triton -> LLVM -> PTX -> ptxas) that the interpreter tests do
not touch; it is also what the TensorRT plugin (#7) ships. The GEMMs must come out as Hopper
wgmma with pipelined asynchronous loads.
"""

import pytest
import torch

pytest.importorskip("triton")

from moe_compile.plugins.grouped_moe import GroupedMoEAttributes
from moe_compile.plugins.grouped_moe.aot import KERNELS, compile_launch, record_launches
from moe_compile.plugins.grouped_moe.configs import KernelConfig
from moe_compile.plugins.grouped_moe.launcher import grouped_moe_triton, launch_plan


@pytest.fixture(scope="module")
def recorded():
    E, H, I, T = 64, 512, 256, 300
    attrs = GroupedMoEAttributes(top_k=8, scoring="sigmoid", normalize_topk=True, n_group=8, topk_group=4,
                                 group_scoring="sum_top2")
    inputs = {"hidden": torch.empty(T, H, dtype=torch.bfloat16), "router_logits": torch.empty(T, E),
              "w_gate_up": torch.empty(E, 2 * I, H, dtype=torch.bfloat16),
              "w_down": torch.empty(E, H, I, dtype=torch.bfloat16), "score_bias": torch.empty(E)}
    config = KernelConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    with record_launches() as launches:
        grouped_moe_triton(**inputs, attrs=attrs, config=config)
    return launches, launch_plan(inputs["hidden"], inputs["w_gate_up"], attrs, config)


def test_recording_captures_six_launches_with_the_plans_grids(recorded):
    launches, plan = recorded
    assert [launch.name for launch in launches] == list(KERNELS)
    assert [launch.grid for launch in launches] == list(plan.grids().values())
    gate_up = launches[3]
    assert gate_up.constexprs["HIDDEN"] == 512 and gate_up.options == {"num_warps": 8, "num_stages": 3}


def test_every_kernel_compiles_for_sm90(recorded):
    launches, _ = recorded
    for launch in launches:
        compiled = compile_launch(launch, arch=90)
        assert ".target sm_90a" in compiled.asm["ptx"] and compiled.asm["cubin"], launch.name
        if launch.name in ("_gate_up_kernel", "_down_kernel"):
            assert "wgmma.mma_async" in compiled.asm["ptx"], launch.name  # Hopper tensor cores
            assert "cp.async" in compiled.asm["ptx"], launch.name  # loads pipelined over num_stages
