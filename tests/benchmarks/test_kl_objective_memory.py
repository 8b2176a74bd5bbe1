"""benchmarks/kl_objective_memory.py: its baseline (whole-tensor log-softmax and KL) computes what
the shipped objective (a sequence at a time) does, so the peaks it compares are of the same work."""

import torch
from benchmark_scripts import benchmark_module

from moe_compile.compiler.lexi.kl_profile import OutputObjective
from moe_compile.compiler.lexi.options import ProfileOptions
from moe_compile.compiler.loader import load_moe_model


def test_the_baseline_scores_plans_as_the_shipped_objective_does(tiny_model_dirs):
    moe_model = load_moe_model(tiny_model_dirs["qwen2_moe"])
    options = ProfileOptions(estimator="self-kl", samples=3, seq_len=12)
    with benchmark_module("kl_objective_memory") as script:
        class WholeTensor(OutputObjective):
            pass

        script.whole_tensor(WholeTensor)
        shipped, baseline = OutputObjective(moe_model, options), WholeTensor(moe_model, options)
    assert torch.equal(shipped.tokens, baseline.tokens)
    torch.testing.assert_close(shipped.base_log_probs, baseline.base_log_probs)
    for ks in ([1] * len(moe_model.layers), [spec.base_top_k for spec in moe_model.layers]):
        got, expected = shipped.plan_kl(ks), baseline.plan_kl(ks)
        assert got.shape == (3,)
        torch.testing.assert_close(got, expected)
    assert float(shipped.plan_kl([1] * len(moe_model.layers)).min()) > 0
