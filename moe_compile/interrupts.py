"""Ctrl-C and SIGTERM: stop where the program is, clean up, never rename a half result into place.

The CLI installs `on_signal` for SIGINT and SIGTERM. It records the signal and raises
KeyboardInterrupt, so every `finally` and the staging cleanup run. A library may catch that
KeyboardInterrupt and go on, or raise something else (torch.onnx turns it into an export
failure): so whatever commits an output (atomic.py, the exporter's rename) first calls
`raise_if_received`, and the CLI reports the run as interrupted whatever exception ends it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received: list[str] = []


def on_signal(signum: int, frame) -> None:
    _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def received() -> str | None:
    """The first signal received since `reset`, by name, or None."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()


def raise_if_received() -> None:
    """Call before committing an output: an interrupted run must leave the previous one."""
    if _received:
        raise KeyboardInterrupt(_received[0])


def _record(signum: int, frame) -> None:
    _received.append(signal.Signals(signum).name)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While native code runs that calls back into Python (TensorRT's builder), a signal is only
    recorded: a KeyboardInterrupt raised through its C++ frames would abort the process. The
    native code polls `received()` and stops; the caller then calls `raise_if_received`."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {signum: signal.signal(signum, _record) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
