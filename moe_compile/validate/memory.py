"""Peak memory while a backend runs: resident set size sampled on the host, allocator peak on a GPU.

Host memory has no resettable high-water mark per phase (ru_maxrss only ever grows), so a
thread samples the resident set size every millisecond. Not while something is timed
(`paused()`): on a 2-core machine those wake-ups cost a 2-thread ONNX Runtime or PyTorch run
10-13 % of its tokens/s (by hand, 2026-12-06; 6 % at one sample per 10 ms), so bench records
the peak in an untimed pass of each workload and times with the sampler stopped. The reported
figure is the growth
over the resident size when the measurement began: what this backend's weights, sessions and
activations added. Memory freed by an earlier backend and reused by this one is not counted,
which is why benchmarks build each backend fresh and report growth, not totals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from moe_compile.process_memory import PeriodicSampler

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = Path("/proc/self/statm")


def _statm() -> tuple[int, int] | None:
    """(resident, resident and file-backed or shared) bytes, or None where /proc is not there."""
    try:
        fields = _STATM.read_text().split()
        return int(fields[1]) * _PAGE, int(fields[2]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.host_bytes` (growth of the resident set, file
    pages mapped included), `peak.host_anon_bytes` (growth of its anonymous part: what only this
    process holds; a checkpoint mapped while it is read shows in the first, not here) and
    `peak.device_bytes`."""

    def __init__(self, interval_s: float = 0.001, cuda: bool = False) -> None:
        self.cuda = cuda
        self.host_bytes: int | None = None
        self.host_anon_bytes: int | None = None
        self.device_bytes: int | None = None
        self._sampling = PeriodicSampler(lambda: self._take(_statm()), interval_s, "peak-memory")
        self._sampled = False  # /proc/self/statm was there when the measurement began
        self._start = self._peak = self._start_anon = self._peak_anon = 0

    def _take(self, statm: tuple[int, int] | None) -> None:
        if statm is not None:
            self._peak = max(self._peak, statm[0])
            self._peak_anon = max(self._peak_anon, statm[0] - statm[1])

    def __enter__(self) -> Self:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = _statm()
        if start is not None:
            self._start = self._peak = start[0]
            self._start_anon = self._peak_anon = start[0] - start[1]
            self._sampled = True
            self._sampling.start()
        return self

    def paused(self):
        """No sampling inside (a timed section); what is resident on entry and exit still counts."""
        return self._sampling.paused()

    def update(self) -> None:
        """Read the peaks so far into host_bytes / device_bytes (also done on exit)."""
        if self._sampled:
            self._take(_statm())
            self.host_bytes = self._peak - self._start
            self.host_anon_bytes = self._peak_anon - self._start_anon
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.device_bytes = torch.cuda.max_memory_allocated()

    def __exit__(self, *exc) -> None:
        self._sampling.stop()
        self.update()


_MEMINFO = Path("/proc/meminfo")


def available_bytes() -> int | None:
    """What the kernel says can still be allocated without swapping (MemAvailable), or None
    where /proc/meminfo is not there (not Linux)."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def return_freed_memory() -> None:
    """Hand memory the process has freed back to the system (glibc's malloc_trim; nothing
    elsewhere). After glibc frees a large block it raises its threshold for serving blocks from
    their own mappings (its dynamic mmap threshold), so a later session's mid-sized allocations
    land on the heap, and freeing that session leaves them there. Measured on an fp32 export of a
    Qwen3-30B-A3B-shaped checkpoint (12.5 GB of weights; 2026-12-05): the first ONNX Runtime
    session gave its 10.7 GB back when it was deleted, the second kept 9.3 GB until malloc_trim
    (0.6 s), and bench ran its next session on top of them."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
