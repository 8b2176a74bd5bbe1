"""An iterator advanced in a background thread, a few items ahead of its consumer.

A streamed export's work per weight is two steps that wait on different things: reading and
converting it (page faults on the checkpoint's map, the cast, the expert layout, the finite
check: torch ops that release the GIL) and writing its bytes (a system call that releases it
too). Run one after the other they add up; with `read_ahead` the next weight is converted while
the last one is written, on the second core.

Only the thread advances the iterator. At most `depth` items wait in between, so memory grows by
`depth` items. An exception the iterator raises comes out of the consumer's loop as itself (one
line where the CLI reports it); a consumer that stops early (an error of its own, Ctrl-C) stops
the thread before it returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _DONE, _FAILED = range(3)


def read_ahead(items: Iterable[T], depth: int = 2, name: str = "read-ahead") -> Iterator[T]:
    """Yield what `items` yields, in order, produced by a background thread up to `depth` ahead."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple) -> bool:
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_FAILED, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = handoff.get()
            if kind == _DONE:
                return
            if kind == _FAILED:
                raise payload
            yield payload
    finally:
        stop.set()
        thread.join()
