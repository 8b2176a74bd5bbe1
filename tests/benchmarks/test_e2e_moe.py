"""benchmarks/e2e_moe.py's parity check, on CPU (the op's CPU kernel is the reference); its dry
run, the whole script, is in test_gpu_evidence.py."""

import pytest
import torch
from benchmark_scripts import benchmark_module


@pytest.fixture(scope="module")
def e2e():
    with benchmark_module("e2e_moe") as module:
        yield module


def _tiny(e2e, dtype):
    setting = e2e.Setting("cpu", dtype, e2e.TINY, layers=1, prefill_tokens=8, batch=1, past=1, time_graph=None,
                          time_eager=None)
    return e2e.build_model(setting)


def _block_and_inputs(e2e, model, tokens=16):
    original = e2e.moe_blocks(model)[0]
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (x, y), = e2e.block_calls([original], lambda: model(ids, use_cache=False))
        block, = e2e.rewrite(model)
    return original, block, x, y


def test_a_block_that_routes_alike_matches_on_every_token(e2e):
    original, block, x, y = _block_and_inputs(e2e, _tiny(e2e, torch.float32))
    with torch.no_grad():
        parity = e2e.block_parity(original, block, x, y)
    assert parity["tokens"] == 16 and parity["tokens_choosing_otherwise"] == 0
    assert parity["relative_diff"] < 1e-5


class _GateSwapping(torch.nn.Module):
    """transformers' router, with experts `a` and `b` swapped in its choice wherever it takes one
    of them only (a router that resolves a tie between them the other way, when they tie)."""

    def __init__(self, gate, a, b):
        super().__init__()
        self.gate, self.a, self.b = gate, a, b
        self.weight = gate.weight  # what the rewrite reads the router from

    def forward(self, h):
        logits, scores, chosen = self.gate(h)
        swapped = torch.where(chosen == self.a, self.b, torch.where(chosen == self.b, self.a, chosen))
        return logits, scores, swapped


def test_a_token_whose_router_scores_tie_at_the_kth_is_counted_and_left_out(e2e):
    """Router rows 0 and 1 made equal: experts 0 and 1 tie on every token. A router keeping the
    other one of them where only one is chosen is right too: those tokens are counted as ties
    and left out, and the rest agree."""
    model = _tiny(e2e, torch.float32)
    transformers_block = e2e.moe_blocks(model)[0]
    with torch.no_grad():
        transformers_block.gate.weight[1] = transformers_block.gate.weight[0]
    transformers_block.gate = _GateSwapping(transformers_block.gate, 0, 1)
    original, block, x, y = _block_and_inputs(e2e, model, tokens=64)
    with torch.no_grad():
        parity = e2e.block_parity(original, block, x, y)
    assert parity["tokens_choosing_otherwise"] > 0 and parity["all_of_them_ties"]
    assert parity["relative_diff"] < 1e-5


def test_a_token_choosing_otherwise_without_a_tie_is_reported(e2e):
    model = _tiny(e2e, torch.float32)
    transformers_block = e2e.moe_blocks(model)[0]
    transformers_block.gate = _GateSwapping(transformers_block.gate, 0, 1)  # no tie between them here
    original, block, x, y = _block_and_inputs(e2e, model, tokens=64)
    with torch.no_grad():
        parity = e2e.block_parity(original, block, x, y)
    assert parity["tokens_choosing_otherwise"] > 0 and not parity["all_of_them_ties"]
