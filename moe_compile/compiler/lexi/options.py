"""LExI stage-1 options (no torch here: the command line reads the defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

ESTIMATORS = ("lexi", "model-aware", "self-kl", "calibration")
KL_ESTIMATORS = ("self-kl", "calibration")  # measured on the model's output: they run the whole model
DEFAULT_REFINE = 2  # plan's rounds of local search on the real objective (verify.py)
"""lexi: Gaussian X, Δ = ||Y_k - Y_base||_F (the paper); model-aware: X through the block's own
pre-MoE RMSNorm gamma, Δ relative to ||Y_base||_F; self-kl / calibration: KL of the final
next-token distribution to the base model with one layer at k, on sequences the model samples
itself / on the text of --calibration."""


@dataclass(frozen=True)
class ProfileOptions:
    batch: int = 2
    seq_len: int = 128
    draws: int = 4
    seed: int = 0
    scale: float = 1.0
    k_min: int = 1
    estimator: str = "lexi"
    calibration: str | None = None  # a UTF-8 text file (estimator "calibration")
    # self-kl samples its sequences at this temperature: 1.5 widens them past the model's most likely text;
    # chosen on a development text no reported result uses (benchmarks/sampling_temperature.py, docs/lexi.md)
    temperature: float = 1.5
    samples: int = 32  # sequences of seq_len tokens, sampled or from --calibration (enough for verify.py's tests)

    @property
    def measures_output(self) -> bool:
        """Whether this estimator runs the whole model (KL_ESTIMATORS) rather than one layer."""
        return self.estimator in KL_ESTIMATORS

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len
