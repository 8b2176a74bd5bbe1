"""LExI stage-1 options (no torch here: the command line reads the defaults at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProfileOptions:
    batch: int = 2
    seq_len: int = 128
    draws: int = 4
    seed: int = 0
    scale: float = 1.0
    k_min: int = 1

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len
