"""Timing through the runner interface: prefill and decode throughput of any backend.

Every backend is timed by the same loops (a warm-up first, then repeated runs; the median is
reported with the spread), so numbers from different runners compare like for like.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from moe_compile.export.decoder import past_names

from .generation import decoder_feed, greedy_steps


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # median over repeats
    min_tokens_per_s: float
    max_tokens_per_s: float
    repeats: int

    def to_json(self) -> dict:
        return asdict(self)


def _summary(tokens: int, seconds: list[float]) -> Throughput:
    rates = [tokens / s for s in seconds]
    return Throughput(statistics.median(rates), min(rates), max(rates), len(rates))


def prefill_throughput(runner, prompt: np.ndarray, empty_past: list[np.ndarray], repeats: int = 5) -> Throughput:
    """Tokens per second of one forward pass over `prompt` [B, S] with an empty past."""
    feed = decoder_feed(prompt, dict(zip(past_names(len(empty_past) // 2), empty_past)), 0)
    runner.infer(feed)  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.infer(feed)
        seconds.append(time.perf_counter() - start)
    return _summary(prompt.size, seconds)


def decode_throughput(runner, prompt: np.ndarray, empty_past: list[np.ndarray], steps: int = 64,
                      repeats: int = 3) -> Throughput:
    """Tokens per second of greedy decoding after `prompt` (one new token per sequence per step)."""
    seconds = []
    for run in range(repeats + 1):  # the first run warms up
        tokens = greedy_steps(runner, prompt, empty_past)
        next(tokens)  # prefill, not timed
        start = time.perf_counter()
        for _ in range(steps):
            next(tokens)
        if run:
            seconds.append(time.perf_counter() - start)
    return _summary(steps * prompt.shape[0], seconds)
