"""The searched plan scored on what it really costs in quality, not on the profile's sum.

The DP minimises Σ_j s_j(k_j), which assumes the layers' losses add up. Here a plan is scored
by a real objective (the mean next-token KL to the base model on calibration tokens,
kl_profile.OutputObjective):

    refine   hill-climbing from the searched plan over pair moves (one layer +1, another -1)
             that stay within the budget, each scored on the real objective
    guard    the (refined) plan against the uniform plan with the same Σk (or, when the budget
             counts something else, the largest one within it): the better one wins
             unless the caller keeps the searched plan
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .search import LayerChoices, total_cost


def uniform_plan(base: Sequence[int], sum_k: int, k_min: int = 1) -> list[int]:
    """`sum_k` spread over the layers as evenly as whole numbers allow (the extra ones evenly
    spaced), never above a layer's base top-k nor below k_min."""
    layers = len(base)
    low, extra = divmod(sum_k, layers)
    ks = [max(k_min, min(b, low + ((i + 1) * extra // layers - i * extra // layers))) for i, b in enumerate(base)]
    for i in range(layers):  # what a layer's base cap left over goes to layers with room
        while sum(ks) < sum_k and ks[i] < base[i]:
            ks[i] += 1
    return ks


def refine(ks: list[int], choices: Sequence[LayerChoices], limit: float, objective: Callable[[list[int]], float],
           passes: int) -> tuple[list[int], float, int]:
    """Up to `passes` rounds of the best improving pair move; returns (plan, its score, moves taken)."""
    best, score, moves = list(ks), objective(list(ks)), 0
    for _ in range(passes):
        candidates = []
        for up in range(len(best)):
            for down in range(len(best)):
                if up == down or best[up] + 1 not in choices[up].cost or best[down] - 1 not in choices[down].cost:
                    continue
                plan = list(best)
                plan[up] += 1
                plan[down] -= 1
                if total_cost(choices, plan) <= limit + 1e-9:
                    candidates.append(plan)
        scored = [(objective(plan), plan) for plan in candidates]
        if not scored:
            break
        value, plan = min(scored, key=lambda item: item[0])
        if value >= score:
            break
        best, score, moves = plan, value, moves + 1
    return best, score, moves


def guard(ks: list[int], score: float, choices: Sequence[LayerChoices], limit: float, base: Sequence[int],
          k_min: int, objective: Callable[[list[int]], float], keep_searched: bool) -> tuple[list[int], dict]:
    """The plan to return and the record of the comparison with the uniform plan of the same Σk."""
    sum_k = sum(ks)
    uniform = uniform_plan(base, sum_k, k_min)
    while total_cost(choices, uniform) > limit + 1e-9 and sum_k > k_min * len(base):
        sum_k -= 1  # a cost that is not Σk (reads, time): the largest uniform plan within the budget
        uniform = uniform_plan(base, sum_k, k_min)
    uniform_fits = total_cost(choices, uniform) <= limit + 1e-9
    uniform_score = objective(uniform) if uniform_fits else None
    use_uniform = uniform_score is not None and uniform_score < score and not keep_searched
    record = {"objective": "mean next-token KL to the base model (nats)", "searched": score,
              "searched_top_k": list(ks), "uniform": uniform_score, "uniform_top_k": uniform,
              "uniform_fits_budget": uniform_fits, "returned": "uniform" if use_uniform else "searched"}
    return (uniform if use_uniform else list(ks)), record
