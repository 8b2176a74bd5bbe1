"""The searched plan scored on what it really costs in quality, not on the profile's sum.

The DP minimises Σ_j s_j(k_j), which assumes the layers' losses add up. Here a plan is scored
by a real objective: one value per calibration sequence (the next-token KL to the base model,
kl_profile.OutputObjective.plan_kl), and plans are compared by the mean.

    refine   hill-climbing from the searched plan over pair moves (one layer +1, another -1)
             that stay within the budget, each scored on the real objective
    guard    the (refined) plan against the uniform plan with the same Σk (or, when the budget
             counts something else, the largest one within it)

A move, and the searched plan over uniform, is taken only when its gain is significant: the
mean of the paired per-sequence differences above z standard errors (one-sided, level ALPHA,
Bonferroni over the moves of a round). Otherwise refine picks the best-looking of tens of moves
whose true differences are smaller than the noise of a few thousand tokens, the winner's curse:
on demo-deepseek at Σk 37 of 42, 8 sampled sequences ranked a refined plan best that 32 ranked
below the DP's plan, and it was worse on both evaluation texts (docs/lexi.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import torch

from .search import LayerChoices, total_cost

ALPHA = 0.05
Scores = Callable[[list[int]], torch.Tensor]  # a plan -> its loss per calibration sequence [S]


def paired_gain(candidate: torch.Tensor, incumbent: torch.Tensor) -> tuple[float, float | None]:
    """(mean of incumbent - candidate per sequence, its standard error; None from one sequence)."""
    gain = (incumbent - candidate).double()
    error = float(gain.std()) / math.sqrt(gain.numel()) if gain.numel() > 1 else None
    return float(gain.mean()), error


def significantly_lower(candidate: torch.Tensor, incumbent: torch.Tensor, comparisons: int = 1) -> bool:
    """Whether `candidate`'s per-sequence losses are lower than `incumbent`'s (paired, one-sided
    z test at ALPHA / comparisons; a normal approximation, sound from a few tens of sequences).
    Without spread (one sequence, or the same difference on each) any gain counts."""
    mean, error = paired_gain(candidate, incumbent)
    if not error:
        return mean > 0
    return mean > NormalDist().inv_cdf(1 - ALPHA / comparisons) * error


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


def refine(ks: list[int], choices: Sequence[LayerChoices], limit: float, objective: Scores,
           passes: int) -> tuple[list[int], torch.Tensor, int]:
    """Up to `passes` rounds of the best pair move, taken only if significantly better; returns
    (plan, its per-sequence scores, moves taken)."""
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
        value, plan = min(scored, key=lambda item: float(item[0].mean()))
        if not significantly_lower(value, score, comparisons=len(scored)):
            break
        best, score, moves = plan, value, moves + 1
    return best, score, moves


def guard(ks: list[int], score: torch.Tensor, choices: Sequence[LayerChoices], limit: float, base: Sequence[int],
          k_min: int, objective: Scores, keep_searched: bool) -> tuple[list[int], dict]:
    """The plan to return and the record of the comparison with the uniform plan of the same Σk:
    the searched plan unless uniform fits and the searched one is not significantly better."""
    sum_k = sum(ks)
    uniform = uniform_plan(base, sum_k, k_min)
    while total_cost(choices, uniform) > limit + 1e-9 and sum_k > k_min * len(base):
        sum_k -= 1  # a cost that is not Σk (reads, time): the largest uniform plan within the budget
        uniform = uniform_plan(base, sum_k, k_min)
    uniform_fits = total_cost(choices, uniform) <= limit + 1e-9
    if not uniform_fits:
        uniform_score = None
    else:
        uniform_score = score if uniform == list(ks) else objective(uniform)
    better = uniform_score is None or significantly_lower(score, uniform_score)
    use_uniform = not better and not keep_searched
    error = None if uniform_score is None else paired_gain(score, uniform_score)[1]
    record = {"objective": "mean next-token KL to the base model (nats)", "searched": float(score.mean()),
              "searched_top_k": list(ks), "uniform": None if uniform_score is None else float(uniform_score.mean()),
              "uniform_top_k": uniform, "uniform_fits_budget": uniform_fits, "sequences": int(score.numel()),
              "gain_standard_error": error, "significantly_better": better,
              "returned": "uniform" if use_uniform else "searched"}
    return (uniform if use_uniform else list(ks)), record
