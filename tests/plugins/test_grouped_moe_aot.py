"""The kernels compiled ahead of time for sm_90 on this CPU machine, as the launcher launches them.

This is the GPU compiler path (Triton -> LLVM -> PTX -> ptxas) that the interpreter tests do
not touch; it is also what the TensorRT plugin (#7) ships. The GEMMs must come out as Hopper
wgmma with pipelined asynchronous loads. Compiling runs in a fresh process: Triton's
interpreter, which other tests run in this one, leaves triton.language patched.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from moe_compile.grouped_moe_op import GroupedMoEAttributes
from moe_compile.plugins.grouped_moe.aot import KERNELS, record_launches
from moe_compile.plugins.grouped_moe.configs import KernelConfig
from moe_compile.plugins.grouped_moe.launcher import grouped_moe_triton, launch_plan


def test_recording_captures_six_launches_with_the_plans_grids():
    E, H, I, T = 64, 512, 256, 300
    attrs = GroupedMoEAttributes(top_k=8, scoring="sigmoid", normalize_topk=True, n_group=8, topk_group=4,
                                 group_scoring="sum_top2")
    inputs = {"hidden": torch.empty(T, H, dtype=torch.bfloat16), "router_logits": torch.empty(T, E),
              "w_gate_up": torch.empty(E, 2 * I, H, dtype=torch.bfloat16),
              "w_down": torch.empty(E, H, I, dtype=torch.bfloat16), "score_bias": torch.empty(E)}
    config = KernelConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    with record_launches() as launches:
        grouped_moe_triton(**inputs, attrs=attrs, config=config)
    assert [launch.name for launch in launches] == list(KERNELS)
    assert [launch.grid for launch in launches] == list(launch_plan(inputs["hidden"], inputs["w_gate_up"], attrs,
                                                                    config).grids().values())
    gate_up = launches[3]
    assert gate_up.constexprs["HIDDEN"] == 512 and gate_up.options == {"num_warps": 8, "num_stages": 3}
    assert gate_up.args["top_k"] == 8 and gate_up.args["hidden_ptr"] is inputs["hidden"]
    with record_launches() as launches:  # one chunk of tokens: the route kernel aligns alone
        grouped_moe_triton(**{name: t[:3] if name in ("hidden", "router_logits") else t
                              for name, t in inputs.items()}, attrs=attrs, config=config)
    assert [launch.name for launch in launches] == ["_route_kernel", "_gate_up_kernel", "_down_kernel",
                                                    "_combine_kernel"]
    assert launches[0].constexprs["SINGLE_CHUNK"]


@pytest.mark.parametrize("tokens", [8, 4096])
def test_every_kernel_compiles_for_sm90(tmp_path, tokens):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "moe_compile.plugins.grouped_moe.aot", "--experts", "64", "--hidden", "512",
                    "--inter", "256", "--top-k", "8", "--tokens", str(tokens), "--out", str(tmp_path)],
                   env=env, check=True, capture_output=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    single = ["_route_kernel", "_gate_up_kernel", "_down_kernel", "_combine_kernel"]
    assert manifest["arch"] == "sm_90"
    assert [k["kernel"] for k in manifest["kernels"]] == (single if tokens == 8 else list(KERNELS))
    for kernel in manifest["kernels"]:
        ptx = (tmp_path / kernel["ptx"]).read_text()
        assert ".target sm_90a" in ptx and f".entry {kernel['name']}" in ptx
        assert (tmp_path / kernel["cubin"]).stat().st_size > 0
        if kernel["kernel"] in ("_gate_up_kernel", "_down_kernel"):
            # Hopper's warpgroup MMA needs 64-row tiles; decode's 16-row tiles use mma.sync
            assert ("wgmma.mma_async" if tokens == 4096 else "mma.sync") in ptx, kernel["kernel"]
            assert "cp.async" in ptx and kernel["num_stages"] > 1, kernel["kernel"]  # pipelined loads
    gate_up = manifest["kernels"][-3]
    assert gate_up["signature"]["hidden_ptr"] == "*bf16" and gate_up["constexprs"]["stride_wk"] == 1
