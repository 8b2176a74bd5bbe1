"""LExI stage 2: the DP is exact (equals brute force), the GA never beats it."""

import itertools
import random

import pytest

from moe_compile.compiler.lexi.search import LayerChoices, solve_dp, solve_ga, total_cost, total_delta


def _instance(seed: int, layers: int, integral: bool) -> tuple[list[LayerChoices], float]:
    rng = random.Random(seed)
    choices = []
    for _ in range(layers):
        base = rng.randint(2, 5)
        ks = range(1, base + 1)
        deltas = sorted((round(rng.uniform(0, 10), 3) for _ in ks), reverse=True)
        deltas[-1] = 0.0
        cost = {k: float(k) if integral else round(k * rng.uniform(0.5, 1.5), 3) for k in ks}
        choices.append(LayerChoices(cost=cost, delta=dict(zip(ks, deltas))))
    low = total_cost(choices, [1] * layers)
    high = total_cost(choices, [layer.ks[-1] for layer in choices])
    budget = round(rng.uniform(low, high)) if integral else rng.uniform(low, high)
    return choices, max(budget, low)


def _brute_force(choices, budget):
    best = None
    for ks in itertools.product(*(layer.ks for layer in choices)):
        if total_cost(choices, ks) <= budget + 1e-9:
            value = total_delta(choices, ks)
            if best is None or value < best - 1e-12:
                best = value
    return best


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_brute_force_on_active_experts(seed):
    choices, budget = _instance(seed, layers=5, integral=True)
    ks = solve_dp(choices, budget)
    assert total_cost(choices, ks) <= budget
    assert total_delta(choices, ks) == pytest.approx(_brute_force(choices, budget), abs=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_dp_on_real_valued_costs_never_exceeds_the_budget(seed):
    """Latency costs are rounded up onto a grid: the plan fits, and on a fine grid it is optimal."""
    choices, budget = _instance(seed, layers=4, integral=False)
    ks = solve_dp(choices, budget, resolution=100_000)
    assert total_cost(choices, ks) <= budget
    assert total_delta(choices, ks) == pytest.approx(_brute_force(choices, budget), abs=1e-6)


@pytest.mark.parametrize("seed", range(15))
def test_ga_never_beats_the_dp_and_respects_the_budget(seed):
    choices, budget = _instance(seed, layers=6, integral=True)
    dp = total_delta(choices, solve_dp(choices, budget))
    ga_ks = solve_ga(choices, budget, seed=seed, population=32, generations=60)
    assert total_cost(choices, ga_ks) <= budget
    assert all(layer.ks[0] <= k <= layer.ks[-1] for layer, k in zip(choices, ga_ks))
    assert total_delta(choices, ga_ks) >= dp - 1e-9


def test_ga_reaches_the_optimum_of_a_small_instance():
    choices, budget = _instance(3, layers=4, integral=True)
    ga_ks = solve_ga(choices, budget, seed=0, population=48, generations=120)
    assert total_delta(choices, ga_ks) == pytest.approx(total_delta(choices, solve_dp(choices, budget)))


def test_ga_takes_a_non_additive_objective():
    """E.g. penalise plans whose k varies a lot between neighbouring layers."""
    choices, budget = _instance(5, layers=6, integral=True)

    def smooth(ks):
        return total_delta(choices, ks) + 5.0 * sum(abs(a - b) for a, b in zip(ks, ks[1:]))

    ga_ks = solve_ga(choices, budget, objective=smooth, seed=1, population=48, generations=120)
    assert total_cost(choices, ga_ks) <= budget
    assert smooth(ga_ks) <= smooth(solve_dp(choices, budget)) + 1e-9


def test_infeasible_budget_raises():
    choices = [LayerChoices(cost={1: 1.0, 2: 2.0}, delta={1: 1.0, 2: 0.0})] * 3
    with pytest.raises(ValueError):
        solve_dp(choices, 2)
    with pytest.raises(ValueError):
        solve_ga(choices, 2)
