"""benchmarks/kernel_moe.py without a GPU: its dry run, its arithmetic, and the grouped_mm peer."""

import json
import math

import pytest
import torch
from benchmark_scripts import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("kernel_moe") as module:
        yield module


@pytest.mark.filterwarnings("ignore:no tuned grouped-MoE config")
def test_dry_run_measures_on_cpu_and_writes_the_result_schema_and_a_plot(bench, tmp_path, capsys):
    """The dry run is the GPU run's measurement on CPU: one shape at its E and k, small H and I."""
    bench.main(["--dry-run", "--shapes", "mixtral-8x7b", "--tokens", "1", "5", "--no-lexi", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "kernel-dry_run.json").read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert (tmp_path / "kernel-dry_run.png").read_bytes()[:4] == b"\x89PNG"
    assert {"device", "versions", "command", "peak", "rows", "summary"} <= set(report)
    assert report["peak"]["copy_tb_s"] > 0 and report["peak"]["bf16_tflops"] > 0
    assert [(r["E"], r["H"], r["I"], r["k"], r["tokens"]) for r in report["rows"]] == [(8, 32, 16, 2, 1), (8, 32, 16, 2, 5)]
    for r in report["rows"]:
        assert r["ours_us"] > 0 and r["hbm_fraction"] > 0 and r["timing"]["ours"] == "host_wall_clock"
        assert "pytorch_reference" in r["peers_us"]
    assert report["summary"]["geomean_speedup_vs_best_peer"] is not None


def test_the_benchmark_covers_five_shapes_from_decode_to_8192_tokens(bench):
    assert set(bench.SHAPES) == {"qwen1.5-moe-a2.7b", "olmoe-1b-7b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"}
    assert bench.SHAPES["deepseek-v3"] == (256, 7168, 2048, 8)
    assert min(bench.TOKENS) == 1 and max(bench.TOKENS) == 8192
    assert bench.weight_copies(256, 7168, 2048) == 1 and bench.weight_copies(60, 2048, 1408) == 2


def test_a_plan_file_gives_item_five_its_top_k(bench, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"index": i, "top_k": 3} for i in range(24)]}))
    assert bench.plan_top_k(plan) == ([3] * 24, str(plan))


def test_fractions_and_summary(bench):
    peak = {"copy_tb_s": 3.0, "bf16_tflops": 800.0}
    r = bench.row("x", 8, 4096, 14336, 2, 1, 2, 300.0, {"a": 600.0, "b": 450.0}, peak)
    weight_bytes = 2 * 3 * 4096 * 14336 * 2
    assert r["hbm_fraction"] == pytest.approx((weight_bytes + 2 * 4096 * 2 + 8 * 4) / 300e-6 / 3e12)
    assert r["flops_fraction"] == pytest.approx(2 * 1 * 2 * 3 * 4096 * 14336 / 300e-6 / 800e12)
    s = bench.row("x", 8, 4096, 14336, 2, 4096, 8, 1000.0, {"a": 500.0}, peak)
    summary = bench.summary([r, s])
    assert summary["geomean_speedup_vs_best_peer"] == pytest.approx(math.sqrt(1.5 * 0.5))
    assert summary["min_decode_hbm_fraction"] == r["hbm_fraction"]
    assert summary["min_prefill_flops_fraction"] == s["flops_fraction"]


def test_grouped_mm_peer_computes_the_op(bench):
    from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference

    g = torch.Generator().manual_seed(0)
    x, logits = torch.randn(9, 32, generator=g).bfloat16(), torch.randn(9, 8, generator=g)
    w_gate_up = (torch.randn(8, 48, 32, generator=g) / 32 ** 0.5).bfloat16()
    w_down = (torch.randn(8, 32, 24, generator=g) / 24 ** 0.5).bfloat16()
    got = bench.grouped_mm_moe(x, logits, w_gate_up, w_down, 3)
    want = grouped_moe_reference(x, logits, w_gate_up, w_down, GroupedMoEAttributes(top_k=3))
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=2e-2)


def test_merge_keeps_the_shapes_not_rerun(bench):
    def report(shapes, command, lexi=None):
        rows = [bench.row(s, *bench.SHAPES[s], t, 1, 10.0, {}, None) for s in shapes for t in (1, 8)]
        return {"rows": rows, "command": command, "peers_failed": {"p": {f"{shapes[0]}/T=1": "boom"}},
                "lexi": {"tokens": lexi}}

    old = report(["mixtral-8x7b", "olmoe-1b-7b"], "first", lexi={"1": {}})
    new = report(["olmoe-1b-7b"], "second")
    out = bench.merged(old, new, ["olmoe-1b-7b"])
    assert [(r["shape"], r["tokens"]) for r in out["rows"]] == [
        ("olmoe-1b-7b", 1), ("olmoe-1b-7b", 8), ("mixtral-8x7b", 1), ("mixtral-8x7b", 8)]
    assert out["rows"][0] is new["rows"][0] and out["command"] == ["first", "second"]
    assert out["peers_failed"] == {"p": {"mixtral-8x7b/T=1": "boom", "olmoe-1b-7b/T=1": "boom"}}
    assert out["lexi"] == {"tokens": {"1": {}}}


@pytest.mark.filterwarnings("ignore:no tuned grouped-MoE config")
def test_measurement_path_on_cpu(bench, monkeypatch, bf16_dot_in_interpreter):
    """The GPU run's code (inputs, reference check, peers, failures, rows, item 5) on a tiny shape,
    on CPU: our kernels in Triton's interpreter, host wall-clock timing."""
    monkeypatch.setitem(bench.SHAPES, "tiny", (8, 32, 16, 2))
    timer = bench.cpu_timer()
    failed, seen = {}, []

    def wrong(hidden, logits, w_gate_up, w_down, k):
        return bench.grouped_mm_moe(hidden, logits, w_gate_up, w_down, k) * 2

    monkeypatch.setitem(bench.PEERS, "wrong", (wrong, False, None))
    rows = bench.benchmark_shape("tiny", [3], ["pytorch_reference", "torch_grouped_mm", "wrong"],
                                 {"copy_tb_s": 1.0, "bf16_tflops": 1.0}, failed, seen.append, timer)
    assert rows == seen and rows[0]["ours_us"] > 0 and rows[0]["hbm_fraction"] > 0
    assert set(rows[0]["peers_us"]) == {"pytorch_reference", "torch_grouped_mm"}
    assert rows[0]["timing"] == dict.fromkeys(["ours", "pytorch_reference", "torch_grouped_mm"], "host_wall_clock")
    assert "from the reference" in failed["wrong"]["tiny/T=3"]  # a wrong peer is reported, not timed
    lexi = bench.lexi_payoff([2, 1, 1], timer, shape="tiny", tokens=(2,))
    assert set(lexi["2"]["per_k_us"]) == {"1", "2"}
    assert lexi["2"]["plan_us"] == pytest.approx(lexi["2"]["per_k_us"]["2"] + 2 * lexi["2"]["per_k_us"]["1"])
