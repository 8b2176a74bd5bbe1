"""Compare two runners' outputs with polygraphy's comparator and the dtype's tolerance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tolerances import Tolerance


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs: float
    max_rel: float
    passed: bool


def compare_outputs(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: Tolerance,
                    names: list[str] | None = None) -> list[OutputDiff]:
    """Per output: polygraphy's elementwise check (|a - b| <= atol + rtol * |b|) and the worst diffs."""
    from polygraphy.comparator.compare import SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our report says what matters, on one table
    names = names or list(expected)
    check = SimpleCompareFunc(rtol={"": tolerance.rtol}, atol={"": tolerance.atol}, check_shapes=True)
    results = check(IterationResult({n: expected[n] for n in names}, runner_name="expected"),
                    IterationResult({n: got[n] for n in names}, runner_name="got"))
    diffs = []
    for name in names:
        a, b = expected[name].astype(np.float64), got[name].astype(np.float64)
        if a.shape != b.shape:
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False))
            continue
        abs_diff = np.abs(a - b)
        max_abs = float(abs_diff.max()) if abs_diff.size else 0.0
        max_rel = float((abs_diff / np.maximum(np.abs(a), 1e-12)).max()) if abs_diff.size else 0.0
        diffs.append(OutputDiff(name, max_abs, max_rel, bool(results[name])))
    return diffs
