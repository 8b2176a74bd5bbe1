"""Peak memory while a backend runs: resident set size sampled on the host, allocator peak on a GPU.

Host memory has no resettable high-water mark per phase (ru_maxrss only ever grows), so a
thread samples the resident set size every millisecond. The reported figure is the growth
over the resident size when the measurement began: what this backend's weights, sessions and
activations added. Memory freed by an earlier backend and reused by this one is not counted,
which is why benchmarks build each backend fresh and report growth, not totals.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Self

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = Path("/proc/self/statm")


def resident_bytes() -> int | None:
    """This process' resident set size, or None where /proc is not there (not Linux)."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.host_bytes` (growth) and `peak.device_bytes`."""

    def __init__(self, interval_s: float = 0.001, cuda: bool = False) -> None:
        self.interval_s = interval_s
        self.cuda = cuda
        self.host_bytes: int | None = None
        self.device_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak = max(self._peak, resident_bytes() or 0)

    def __enter__(self) -> Self:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = resident_bytes()
        if start is not None:
            self._start = self._peak = start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def update(self) -> None:
        """Read the peaks so far into host_bytes / device_bytes (also done on exit)."""
        if self._thread is not None:
            self._peak = max(self._peak, resident_bytes() or 0)
            self.host_bytes = self._peak - self._start
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.device_bytes = torch.cuda.max_memory_allocated()

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.update()
