"""LExI stage 2: choose k_j per layer to minimise the total sensitivity under a budget.

Each layer j offers choices k in [k_min, k_base_j], each with a cost c_j(k) (active experts,
or predicted time) and a sensitivity Δ_j(k). The sum-of-Δ objective is additive, so
`solve_dp` solves it exactly as a multiple-choice knapsack. `solve_ga` is the paper's genetic
algorithm, for objectives that are not additive; on additive ones it can only match the DP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerChoices:
    """The options of one layer: k -> cost and k -> Δ, over the same ks."""

    cost: dict[int, float]
    delta: dict[int, float]

    @property
    def ks(self) -> list[int]:
        return sorted(self.cost)


def total_cost(layers: Sequence[LayerChoices], ks: Sequence[int]) -> float:
    return math.fsum(layer.cost[k] for layer, k in zip(layers, ks))


def total_delta(layers: Sequence[LayerChoices], ks: Sequence[int]) -> float:
    return math.fsum(layer.delta[k] for layer, k in zip(layers, ks))


def _cost_units(layers: Sequence[LayerChoices], budget: float, resolution: int) -> tuple[list[dict[int, int]], int]:
    """Integer costs for the DP. Whole-number costs (active experts) are used as they are;
    others are rounded *up* onto a grid of budget/resolution, so a plan the DP accepts
    never exceeds the real budget."""
    if all(float(c).is_integer() for layer in layers for c in layer.cost.values()) and float(budget).is_integer():
        return [{k: int(c) for k, c in layer.cost.items()} for layer in layers], int(budget)
    unit = budget / resolution
    return [{k: math.ceil(c / unit - 1e-9) for k, c in layer.cost.items()} for layer in layers], resolution


def solve_dp(layers: Sequence[LayerChoices], budget: float, resolution: int = 4096) -> list[int]:
    """The ks minimising Σ Δ with Σ cost <= budget; ties go to the cheaper plan.

    best[b] is the least Σ Δ of the layers so far at integer cost exactly b. Raises ValueError
    if even the cheapest choices do not fit.
    """
    costs, capacity = _cost_units(layers, budget, resolution)
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    picks = []  # per layer: [capacity + 1] the k chosen to reach each cost
    for layer, cost in zip(layers, costs):
        new = np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int64)
        for k in layer.ks:  # ascending: on equal Δ the smaller k (cheaper) stays
            c = cost[k]
            if c > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[c:] = best[: capacity + 1 - c] + layer.delta[k]
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = k
        best = new
        picks.append(pick)
    if not np.isfinite(best).any():
        raise ValueError("no choice of k fits the budget")
    spent = int(np.argmin(best))  # the first minimum: the cheapest of the best
    ks = []
    for layer, cost, pick in zip(reversed(layers), reversed(costs), reversed(picks)):
        k = int(pick[spent])
        ks.append(k)
        spent -= cost[k]
    return ks[::-1]


def solve_ga(
    layers: Sequence[LayerChoices],
    budget: float,
    objective: Callable[[list[int]], float] | None = None,
    seed: int = 0,
    population: int = 64,
    generations: int = 200,
    tournament: int = 3,
    mutation_rate: float = 0.5,
) -> list[int]:
    """The paper's genetic algorithm: valid random initial population, tournament selection,
    uniform crossover, ±1 zero-sum mutation, projection onto the budget; the best individual
    is always kept. `objective` defaults to Σ Δ and may be any function of the whole plan."""
    objective = objective or (lambda ks: total_delta(layers, ks))
    rng = np.random.default_rng(seed)
    low = np.array([layer.ks[0] for layer in layers])
    high = np.array([layer.ks[-1] for layer in layers])
    if total_cost(layers, low) > budget:
        raise ValueError("no choice of k fits the budget")

    def project(ks: np.ndarray) -> np.ndarray:
        """Lower random layers (still above k_min) by one until the plan fits."""
        ks = np.clip(ks, low, high)
        while total_cost(layers, ks) > budget:
            ks[rng.choice(np.flatnonzero(ks > low))] -= 1
        return ks

    def mutate(ks: np.ndarray) -> np.ndarray:
        up, down = np.flatnonzero(ks < high), np.flatnonzero(ks > low)
        if len(up) and len(down):
            i, j = rng.choice(up), rng.choice(down)
            if i != j:
                ks = ks.copy()
                ks[i] += 1
                ks[j] -= 1
        return ks

    def fitness(ks: np.ndarray) -> float:
        return objective([int(k) for k in ks])

    pool = [project(rng.integers(low, high + 1)) for _ in range(population)]
    scores = [fitness(ks) for ks in pool]
    for _ in range(generations):
        elite = int(np.argmin(scores))
        children, child_scores = [pool[elite]], [scores[elite]]
        while len(children) < population:
            a, b = (min(rng.choice(population, tournament, replace=False), key=lambda i: scores[i])
                    for _ in range(2))
            child = np.where(rng.random(len(layers)) < 0.5, pool[a], pool[b])
            if rng.random() < mutation_rate:
                child = mutate(child)
            child = project(child)
            children.append(child)
            child_scores.append(fitness(child))
        pool, scores = children, child_scores
    return [int(k) for k in pool[int(np.argmin(scores))]]
