"""Timing through the runner interface: prefill, time to first token, and per-step decode latency.

Every backend is timed by these same loops (a warm-up first, then repeated runs), so numbers
from different runners compare like for like. Runners return host numpy arrays, so each timed
call includes the device-to-host copy of its outputs: a GPU runner is synchronised by it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from moe_compile.export.decoder import past_names

from .generation import decoder_feed, greedy_steps


@dataclass(frozen=True)
class Spread:
    """A sample of one quantity over repeated runs: its median and its range."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def scaled(self, factor: float) -> Spread:
        """The same sample in other units (factor > 0 keeps min and max in place)."""
        return Spread(self.median * factor, self.min * factor, self.max * factor, self.runs)

    def inverse(self, numerator: float) -> Spread:
        """numerator / value: seconds -> a rate (the slowest run gives the lowest rate)."""
        return Spread(numerator / self.median, numerator / self.max, numerator / self.min, self.runs)


@dataclass(frozen=True)
class PrefillTiming:
    seconds: Spread  # one forward over the whole prompt batch, empty past
    tokens: int

    @property
    def tokens_per_s(self) -> Spread:
        return self.seconds.inverse(self.tokens)


@dataclass(frozen=True)
class DecodeTiming:
    run_seconds: Spread  # `steps` decode steps, one run
    step_seconds: list[float]  # every timed step of every run
    tokens: int  # new tokens per run (batch x steps)

    @property
    def tokens_per_s(self) -> Spread:
        return self.run_seconds.inverse(self.tokens)

    def step_percentile(self, q: float) -> float:
        return float(np.percentile(self.step_seconds, q))


def time_prefill(runner, prompt: np.ndarray, empty_past: list[np.ndarray], repeats: int = 5) -> PrefillTiming:
    """One forward pass over `prompt` [B, S] with an empty past: the time to the first token."""
    feed = decoder_feed(prompt, dict(zip(past_names(len(empty_past) // 2), empty_past)), 0)
    runner.infer(feed)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.infer(feed)
        seconds.append(time.perf_counter() - start)
    return PrefillTiming(Spread.of(seconds), prompt.size)


def time_decode(runner, prompt: np.ndarray, empty_past: list[np.ndarray], steps: int = 64,
                repeats: int = 3) -> DecodeTiming:
    """Greedy decoding of `steps` tokens per sequence after `prompt`; the prefill is not timed.

    The first run warms up (allocations, kernel choices for each cache length) and is dropped.
    """
    run_seconds, step_seconds = [], []
    for run in range(repeats + 1):
        tokens = greedy_steps(runner, prompt, empty_past)
        next(tokens)  # the prefill
        steps_taken = []
        for _ in range(steps):
            start = time.perf_counter()
            next(tokens)
            steps_taken.append(time.perf_counter() - start)
        if run:
            run_seconds.append(sum(steps_taken))
            step_seconds.extend(steps_taken)
    return DecodeTiming(Spread.of(run_seconds), step_seconds, steps * prompt.shape[0])
