"""Ctrl-C and SIGTERM: stop where the program is, clean up, never rename a half result into place.

The CLI installs `on_signal` for SIGINT and SIGTERM. It records the signal and raises
KeyboardInterrupt, so every `finally` and the staging cleanup run. A library may catch that
KeyboardInterrupt and go on, or raise something else (torch.onnx turns it into an export
failure): so whatever commits an output (atomic.py, the exporter's rename) first calls
`raise_if_received`, and the CLI reports the run as interrupted whatever exception ends it.
"""

from __future__ import annotations

import signal

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
