"""This process' peak memory, for every command's `--json` report.

Linux keeps a high-water mark of the whole resident set (VmHWM, the same as ru_maxrss) but
none of its anonymous part, which is what a streamed command has to keep small (file pages
of a memory-mapped checkpoint are counted in the resident set, yet the kernel drops them
under pressure). So `AnonPeakSampler` reads RssAnon from /proc/self/status every few
milliseconds on a daemon thread, started when the command starts; `peak_memory()` reports
both. Off Linux the /proc fields are None and only ru_maxrss is reported.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_STATUS = Path("/proc/self/status")


def status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmHWM, VmRSS, RssAnon, ...) in bytes, or None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeriodicSampler:
    """`take()` every `interval_s` seconds on a daemon thread between `start()` and `stop()`, once
    more on stopping; `paused()` stops it for a timed section (on a 2-core machine the wake-ups cost
    a run a few per cent of its speed; validate/memory.py), taking a sample on entry and exit."""

    def __init__(self, take: Callable[[], object], interval_s: float, name: str) -> None:
        self.take, self.interval_s, self.name = take, interval_s, name
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Its thread is sampling."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.take()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self._thread is None:
            yield
            return
        self.stop()
        try:
            yield
        finally:
            self.take()
            self.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self.take()


class AnonPeakSampler:
    """The largest RssAnon seen since `start()`, sampled every `interval_s` seconds."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.peak_bytes: int | None = None
        self._lock = threading.Lock()
        self._sampling = PeriodicSampler(self.sample, interval_s, "anon-rss-sampler")

    @property
    def running(self) -> bool:
        return self._sampling.running

    def start(self) -> AnonPeakSampler:
        if status_bytes("RssAnon") is not None:
            self._sampling.start()
        return self

    def paused(self):
        """No sampling inside (bench's timed runs); the resident set on entry and exit is still taken."""
        return self._sampling.paused()

    def sample(self) -> int | None:
        now = status_bytes("RssAnon")
        if now is not None:
            with self._lock:
                self.peak_bytes = max(self.peak_bytes or 0, now)
        return self.peak_bytes


_SAMPLER = AnonPeakSampler()
_HELPER_PEAKS: list[dict] = []  # peak_memory() of child processes that did part of the command's work


def start_sampling() -> None:
    """Begin recording the anonymous peak (the CLI calls this before a command runs)."""
    _SAMPLER.start()


def sampling_paused():
    """A context in which the command's anonymous-peak sampler does not run (bench's timed runs)."""
    return _SAMPLER.paused()


def record_helper_peak(peak: dict) -> None:
    """Count a child process' `peak_memory()` in this command's report (export/early_experts.py)."""
    _HELPER_PEAKS.append(peak)


def peak_memory() -> dict:
    """{peak_rss_bytes (VmHWM / ru_maxrss), peak_anon_rss_bytes (sampled; None if not started or
    not Linux)}: what `--json` reports under `peak_memory`. Where child processes did part of the
    work, also their largest peaks (`helper_peak_rss_bytes`, `helper_peak_anon_rss_bytes`) and
    `total_peak_anon_rss_bytes`, this process' peak plus theirs: an upper bound of what the
    command held at once."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = status_bytes("VmHWM")
    report = {"peak_rss_bytes": hwm if hwm is not None else maxrss * (1 if sys.platform == "darwin" else 1024),
              "peak_anon_rss_bytes": _SAMPLER.sample() if _SAMPLER.running else None}
    if _HELPER_PEAKS:
        helper_anon = max((peak.get("peak_anon_rss_bytes") or 0 for peak in _HELPER_PEAKS), default=0)
        report.update(helper_peak_rss_bytes=max(peak["peak_rss_bytes"] for peak in _HELPER_PEAKS),
                      helper_peak_anon_rss_bytes=helper_anon,
                      total_peak_anon_rss_bytes=(report["peak_anon_rss_bytes"] or 0) + helper_anon)
    return report
