"""Launch geometry and tuned configs of the grouped-MoE kernels: pure Python, no triton needed."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import OP_NAME, GroupedMoEAttributes
from moe_compile.plugins.grouped_moe.configs import (
    KernelConfig,
    config_file_name,
    default_config,
    lookup_config,
    write_table,
)
from moe_compile.plugins.grouped_moe.launch_plan import LaunchPlan, cdiv


def test_importing_the_op_imports_no_triton_and_registers_a_cuda_kernel():
    code = ("import sys, torch, moe_compile.grouped_moe_op; "
            "print('triton' in sys.modules, torch._C._dispatch_has_kernel_for_dispatch_key("
            f"'{OP_NAME}', 'CUDA'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() \
        == ["False", "True"]


def test_attribute_fields_follow_the_op_schema():
    """The CUDA kernel rebuilds the attributes from the schema's trailing arguments, in order."""
    schema = [a.name for a in torch.ops.moe_compile.grouped_moe.default._schema.arguments]
    assert schema[7:] == list(GroupedMoEAttributes(top_k=1).as_dict())


@pytest.mark.parametrize("seed", range(20))
def test_worst_case_buffers_hold_every_routing(seed):
    """Padded rows never exceed max_padded, whatever the counts (at most min(S, E) experts used)."""
    g = torch.Generator().manual_seed(seed)
    experts = int(torch.randint(1, 130, (1,), generator=g))
    top_k = int(torch.randint(1, experts + 1, (1,), generator=g))
    tokens = int(torch.randint(1, 300, (1,), generator=g))
    block_m = 2 ** int(torch.randint(4, 8, (1,), generator=g))
    plan = LaunchPlan(tokens, experts, 64, 32, top_k, 1, KernelConfig(block_m, 32, 32))
    for weights in (torch.rand(experts, generator=g) ** 8, torch.ones(experts)):
        # each token picks top_k distinct experts, popular ones more often
        picks = torch.stack([torch.multinomial(weights, top_k, generator=g) for _ in range(tokens)])
        counts = torch.bincount(picks.flatten(), minlength=experts)
        padded = int(((counts + block_m - 1) // block_m * block_m).sum())
        assert plan.slots == int(counts.sum()) and padded <= plan.max_padded
        assert cdiv(padded, block_m) <= plan.max_blocks


def _worst_case_counts(tokens: int, experts: int, top_k: int) -> list[int]:
    """A routing (slots per expert) that needs the most row blocks, whatever BLOCK_M: one slot on each of
    min(S, E) - 1 experts (each a whole block of padding), every other slot on the last."""
    slots = tokens * top_k
    used = min(slots, experts)
    return [1] * (used - 1) + [slots - (used - 1)] + [0] * (experts - used)


@pytest.mark.parametrize("tokens, experts, hidden, inter, top_k, block_m, block_n", [
    (1000, 60, 2048, 1408, 4, 64, 128), (1, 8, 64, 32, 2, 16, 32), (3, 256, 7168, 2048, 8, 64, 128),
    (17, 16, 200, 136, 16, 32, 64), (4096, 128, 2048, 768, 8, 128, 128)])
def test_grids_give_every_row_block_of_any_routing_a_program_per_column_tile(
        tokens, experts, hidden, inter, top_k, block_m, block_n):
    """Property, not constants: the GEMM grids hold one program per (row block, column tile) of the
    routing that needs the most row blocks (at most one block more); route covers every token once."""
    plan = LaunchPlan(tokens=tokens, experts=experts, hidden=hidden, inter=inter, top_k=top_k, n_group=1,
                      config=KernelConfig(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64))
    grids = plan.grids()
    worst_blocks = sum(cdiv(count, block_m) for count in _worst_case_counts(tokens, experts, top_k))
    blocks = grids["gate_up"][0] // cdiv(inter, block_n)  # gate and up of I columns per program
    assert grids["gate_up"][0] % cdiv(inter, block_n) == 0 and grids["down"] == (blocks * cdiv(hidden, block_n),)
    assert worst_blocks <= blocks <= worst_blocks + 1  # covers the worst routing; the bound is near tight
    assert grids.get("scatter", grids["route"]) == grids["route"]  # no scatter launch when one chunk aligns
    assert (grids["route"][0] - 1) * plan.block_t < tokens <= grids["route"][0] * plan.block_t
    assert plan.buffers()["sorted_ids"][0][0] >= worst_blocks * block_m  # every padded row has a slot entry


def test_kernel_config_refuses_tiles_tl_dot_cannot_take():
    with pytest.raises(InvalidInput, match="BLOCK_N=24"):
        KernelConfig(BLOCK_M=16, BLOCK_N=24, BLOCK_K=32)
    with pytest.raises(InvalidInput, match="BLOCK_M=8"):
        KernelConfig(BLOCK_M=8, BLOCK_N=32, BLOCK_K=32)


def test_lookup_takes_the_nearest_token_count(tmp_path):
    table = {1: KernelConfig(16, 32, 64), 64: KernelConfig(32, 64, 64), 4096: KernelConfig(128, 128, 64, 8, 3)}
    write_table(tmp_path / config_file_name(60, 1408, "NVIDIA H100 80GB HBM3"), table)
    assert (tmp_path / "E=60,N=1408,device_name=NVIDIA_H100_80GB_HBM3.json").is_file()

    def lookup(tokens):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a tuned file exists: no warning
            return lookup_config(tokens, 60, 1408, 4, "NVIDIA H100 80GB HBM3", directory=tmp_path)

    assert lookup(1) == lookup(20) == table[1]
    assert lookup(40) == lookup(1000) == table[64]
    assert lookup(3000) == lookup(100000) == table[4096]
    assert lookup(2080) == table[64]  # equally near 64 and 4096: the smaller


def test_lookup_without_a_file_warns_and_uses_the_default(tmp_path):
    with pytest.warns(UserWarning, match=r"E=7,N=99,device_name=Some_GPU\.json"):
        config = lookup_config(2, 7, 99, 2, "Some GPU", directory=tmp_path)
    assert config == default_config(2, 7, 2)
    assert default_config(1, 64, 8).BLOCK_M < default_config(16384, 64, 8).BLOCK_M


def test_a_broken_table_is_refused(tmp_path):
    (tmp_path / config_file_name(8, 16, "gpu")).write_text(json.dumps({"1": {"BLOCK_M": 16}}))
    with pytest.raises(InvalidInput, match="not a tuned-config table"):
        lookup_config(1, 8, 16, 2, "gpu", directory=tmp_path)
