"""Sensitivity estimators beside LExI's Δ, the local search and the guard against uniform."""

import json

import pytest
import torch

from moe_compile.cli import main
from moe_compile.compiler.lexi.cost import MeasuredReads
from moe_compile.compiler.lexi.kl_profile import OutputObjective
from moe_compile.compiler.lexi.profile import ProfileOptions, layer_deltas, pre_moe_norm_weight, profile_model
from moe_compile.compiler.lexi.search import LayerChoices, total_cost
from moe_compile.compiler.lexi.verify import guard, refine, uniform_plan
from moe_compile.compiler.loader import load_moe_model

FAST_KL = ProfileOptions(seq_len=8, samples=2, estimator="self-kl")


def test_uniform_plan_spreads_sum_k_within_each_layers_range():
    assert uniform_plan([4, 4, 4, 4], 10) == [2, 3, 2, 3]
    capped = uniform_plan([1, 4, 4], 7)
    assert sum(capped) == 7 and capped[0] == 1 and all(k <= 4 for k in capped)


def _choices(layers: int, base: int) -> list[LayerChoices]:
    ks = range(1, base + 1)
    return [LayerChoices(cost={k: float(k) for k in ks}, delta={k: 0.0 for k in ks}) for _ in range(layers)]


def _exact(function):
    """An objective without noise: one 'sequence' whose loss is `function(ks)`."""
    return lambda ks: torch.tensor([float(function(ks))], dtype=torch.float64)


def test_refine_follows_a_non_additive_objective_within_the_budget():
    choices = _choices(3, 4)

    def loss(ks):  # layer 0 matters only when layer 1 is low: no sum of per-layer terms
        return (4 - ks[0]) * (5 - ks[1]) + 0.1 * (4 - ks[2])

    objective = _exact(loss)
    plan, score, moves = refine([1, 1, 4], choices, 6, objective, passes=5)
    assert total_cost(choices, plan) <= 6
    assert float(score) == loss(plan) < loss([1, 1, 4]) and moves >= 1
    assert refine([1, 1, 4], choices, 6, objective, passes=0)[::2] == ([1, 1, 4], 0)


def test_guard_returns_the_better_plan_unless_told_to_keep_the_searched_one():
    choices = _choices(4, 4)
    objective = _exact(lambda ks: sum((k - 2) ** 2 for k in ks))  # uniform [2, 2, 2, 2] is the best of Σk 8

    searched = [4, 2, 1, 1]
    chosen, record = guard(searched, objective(searched), choices, 8, [4] * 4, 1, objective, keep_searched=False)
    assert chosen == [2, 2, 2, 2] and record["returned"] == "uniform" and record["uniform"] == 0
    kept, record = guard(searched, objective(searched), choices, 8, [4] * 4, 1, objective, keep_searched=True)
    assert kept == searched and record["returned"] == "searched"


def _noisy(means: dict[tuple, float], noise: torch.Tensor):
    """Per-sequence losses: a plan's mean, plus noise that is the same for every plan (paired),
    plus, for every plan but [2, 2, 2], an alternating ±0.02: a gain of g over [2, 2, 2] is
    g ± 0.02 per sequence, a standard error of 0.02 / sqrt(31)."""
    alternating = 0.02 * (1 - 2 * (torch.arange(noise.numel()) % 2)).double()

    def objective(ks):
        return means.get(tuple(ks), 1.0) + noise + (0 if ks == [2, 2, 2] else alternating)
    return objective


def test_a_gain_within_the_noise_moves_nothing_and_a_clear_one_does():
    choices = _choices(3, 4)
    noise = torch.randn(32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    within = _noisy({(2, 2, 2): 1.0, (3, 1, 2): 0.995}, noise)  # z = 0.005 / 0.0036: 1.4 < 1.645
    assert refine([2, 2, 2], choices, 6, within, passes=3)[::2] == ([2, 2, 2], 0)
    clear = _noisy({(2, 2, 2): 1.0, (3, 1, 2): 0.98}, noise)  # z = 5.6, above Bonferroni's 2.39 for 6 moves
    assert refine([2, 2, 2], choices, 6, clear, passes=1)[::2] == ([3, 1, 2], 1)

    uniform = [2, 2, 2]
    chosen, record = guard([3, 1, 2], within([3, 1, 2]), choices, 6, [4] * 3, 1, within, keep_searched=False)
    assert chosen == uniform and record["returned"] == "uniform" and not record["significantly_better"]
    assert record["searched"] < record["uniform"] and record["gain_standard_error"] > 0  # lower, but not shown
    chosen, record = guard([3, 1, 2], clear([3, 1, 2]), choices, 6, [4] * 3, 1, clear, keep_searched=False)
    assert chosen == [3, 1, 2] and record["significantly_better"]


def test_model_aware_input_goes_through_the_blocks_norm_and_is_relative(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    spec = ir.layers[0]
    weights = spec.load_weights()
    options = ProfileOptions(batch=1, seq_len=16, draws=1, estimator="model-aware")
    gamma = pre_moe_norm_weight(ir, spec)
    relative = layer_deltas(spec, weights, options, gamma)
    # Δ relative to ||Y_base|| does not change when the whole input (and so Y) is scaled up...
    # the norm's gamma reshapes the input: a different gamma, a different table
    assert layer_deltas(spec, weights, options, gamma * torch.linspace(0.1, 3.0, gamma.numel())) != relative
    assert layer_deltas(spec, weights, ProfileOptions(batch=1, seq_len=16, draws=1)) != relative
    assert relative[spec.base_top_k] == 0 and all(0 < relative[k] < 10 for k in range(1, spec.base_top_k))


def test_self_kl_is_zero_at_the_base_and_positive_below(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    objective = OutputObjective(ir, FAST_KL)
    assert objective.tokens.shape == (2, 8)
    assert objective.kl({}) == pytest.approx(0.0, abs=1e-6)
    profile = profile_model(ir, FAST_KL, show_progress=False, objective=objective)
    for layer in profile.layers:
        assert layer.delta[layer.base_top_k] == 0.0
        assert layer.delta[1] > 0.0
    assert objective.kl({}) == pytest.approx(0.0, abs=1e-6)  # every layer set back to its base k


def test_self_kl_samples_at_its_temperature_and_records_it(tiny_model_dirs):
    """Sequences sampled hotter are less likely under the model: the mean log-probability of each
    sampled token given its prefix falls as the temperature rises."""
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    likelihood = {}
    for temperature in (0.25, 1.5, 4.0):
        options = ProfileOptions(seq_len=16, samples=8, estimator="self-kl", temperature=temperature)
        objective = OutputObjective(ir, options)
        log_probs = objective.lm(input_ids=objective.tokens).logits[:, :-1].float().log_softmax(-1)
        likelihood[temperature] = log_probs.gather(-1, objective.tokens[:, 1:, None]).mean().item()
        if temperature == 1.5:
            doc = profile_model(ir, options, show_progress=False, objective=objective).to_json()
            assert doc["options"]["temperature"] == 1.5
    assert likelihood[0.25] > likelihood[1.5] > likelihood[4.0], likelihood


def test_a_profile_saved_before_the_temperature_was_recorded_reads_as_sampled_at_1(tiny_model_dirs):
    from moe_compile.compiler.lexi.profile import profile_from_json

    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    doc = profile_model(ir, ProfileOptions(batch=1, seq_len=4, draws=1), show_progress=False).to_json()
    del doc["options"]["temperature"]
    assert profile_from_json(doc, ir, "old.json", ProfileOptions()).options.temperature == 1.0


def test_plan_prints_the_guard_and_records_it(tmp_path, capsys, tiny_model_dirs):
    out = tmp_path / "plan.json"
    argv = ["plan", tiny_model_dirs["qwen2_moe"], "--budget", "0.5", "--estimator", "self-kl", "--seq-len", "8",
            "--samples", "2", "--refine", "1", "--out", str(out)]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "guard: KL to the base model" in printed
    doc = json.loads(out.read_text())
    verified = doc["verified"]
    chosen = [layer["top_k"] for layer in doc["layers"]]
    assert chosen == (verified["uniform_top_k"] if verified["returned"] == "uniform" else verified["searched_top_k"])
    assert verified["searched"] >= 0 and doc["profile"]["estimator"] == "self-kl"


@pytest.mark.parametrize("flag, verified", [(None, False), ("--verify", True)])
def test_plan_does_not_verify_a_big_model_unless_asked(tmp_path, capsys, tiny_model_dirs, monkeypatch, flag, verified):
    """Over LOADED_MAX_BYTES of weights (here lowered below the tiny model's size) every scored
    plan would read the checkpoint again: plan skips refine and guard and says so; --verify runs them
    (on the model run layer by layer)."""
    import moe_compile.compiler.layered_model as layered

    monkeypatch.setattr(layered, "LOADED_MAX_BYTES", 1024)
    out = tmp_path / "plan.json"
    argv = ["plan", tiny_model_dirs["qwen2_moe"], "--budget", "0.5", "--seq-len", "8", "--samples", "2",
            "--refine", "0", "--out", str(out), *([flag] if flag else [])]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert ("verified" in json.loads(out.read_text())) == verified
    assert ("guard: skipped: the model has more than" in printed) != verified
    assert ("guard: KL to the base model" in printed) == verified


@pytest.mark.parametrize("content, message", [
    (b"", "fewer than one window"),
    (b"\xff\xfe\x00 not text", "cannot read"),
    (b"a few words", "fewer than one window"),
], ids=["empty", "not-utf8", "too-short"])
def test_bad_calibration_text_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    text = tmp_path / "calibration.txt"
    text.write_bytes(content)
    out = tmp_path / "profile.json"
    code = main(["profile", "demo", "--estimator", "calibration", "--calibration", str(text), "--seq-len", "64",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--calibration" in err[0] and message in err[0]
    assert not out.exists()


def test_measured_reads_count_distinct_experts_per_decode_step(tiny_model_dirs):
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    spec = ir.layers[0]
    ks = list(range(1, spec.base_top_k + 1))
    objective = OutputObjective(ir, FAST_KL)  # 2 sequences of 8 tokens
    reads = MeasuredReads(lambda index: objective.block_inputs[index]).costs(spec, ks)
    assert all(k <= reads[k] <= min(spec.num_experts, 2 * k) for k in ks)
    assert all(reads[k] < reads[k + 1] for k in ks[:-1])
    one_sequence = MeasuredReads(lambda index: objective.block_inputs[index][:1]).costs(spec, ks)
    assert one_sequence == {k: float(k) for k in ks}  # one token reads exactly its k experts
