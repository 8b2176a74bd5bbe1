"""Time a GPU callable the way it runs in a served model: replayed from a CUDA graph.

Capturing `reps` calls in one graph and replaying it removes Python and launch overhead, which
at decode sizes is larger than the kernels themselves. A callable that synchronises with the
host cannot be captured; `eager_us` times those with CUDA events around plain calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _median_us(run: Callable[[], None], calls: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def cuda_graph_us(fn: Callable[[], object], reps: int = 20, rounds: int = 7) -> float:
    """Median microseconds per call of `fn`, replayed `reps` times a round from a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # compile, autotune and allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    return _median_us(graph.replay, reps, rounds)


def eager_us(fn: Callable[[], object], reps: int = 10, rounds: int = 5) -> float:
    """Median microseconds per call of `fn` called eagerly (for callables that sync with the host)."""
    fn()
    torch.cuda.synchronize()

    def run():
        for _ in range(reps):
            fn()

    return _median_us(run, reps, rounds)


def wall_us(fn: Callable[[], object], reps: int = 1, warm_up: bool = True) -> float:
    """Host wall-clock microseconds per call: for CPU runs (Triton's interpreter) only."""
    if warm_up:
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) * 1e6 / reps
