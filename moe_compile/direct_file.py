"""A file written once, front to back, past the page cache (O_DIRECT) where the system allows.

An export writes tens of gigabytes that nothing reads back soon. Written through the page cache,
each byte is copied into a fresh cache page by the kernel, and on the 2-core VMs this project runs
on that copy was the largest single cost of a streamed export: `dd bs=16M conv=fsync` of 7.9 GB
spent 9-19 s of system time at 390-760 MB/s, the same with `oflag=direct` 0.6-0.8 s at
1.8-2.1 GB/s (2026-12-05, by hand). With O_DIRECT the device reads the bytes from our memory.

O_DIRECT needs the buffer, the length and the file offset of every write to be multiples of the
device's block size, so bytes are gathered in a page-aligned buffer of whole 4096-byte blocks and
written a buffer at a time; the last block is written padded with zeros and the file truncated
back to the bytes given. Two writers may fill one file at once, each from its own offset
(`start`): a streamed export writes its MoE weights and the rest side by side. Where O_DIRECT
is refused (tmpfs, macOS, some network or FUSE file systems: at open or at the first write),
the same file is written through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import numpy as np

BLOCK = 4096  # the largest logical block size O_DIRECT asks alignment to on common devices
_BUFFER_BYTES = 16 << 20
_DIRECT = getattr(os, "O_DIRECT", 0)


class DirectFile:
    """Appends bytes to a file at `path`; `tell()` is the offset of the next byte, `close()` flushes.

    Use as a context manager: leaving it with an exception closes the descriptor without writing
    what is still buffered (the caller removes the half-written file)."""

    def __init__(self, path: Path, buffer_bytes: int = _BUFFER_BYTES, direct: bool = True,
                 start: int | None = None) -> None:
        """A new file at `path`; or with `start` (a multiple of BLOCK) the existing file, written
        from that offset on and not truncated at `close()` (another writer may own what follows:
        its owner, or whoever closes last, sets the file's size)."""
        if buffer_bytes % BLOCK or (start or 0) % BLOCK:
            raise ValueError(f"buffer_bytes and start must be multiples of {BLOCK}")
        flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if start is None else 0)
        self.direct = bool(direct and _DIRECT)
        try:
            self._fd = os.open(path, flags | (_DIRECT if self.direct else 0), 0o644)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self.direct = False
            self._fd = os.open(path, flags, 0o644)
        self._exact_size = start is None
        if start:
            os.lseek(self._fd, start, os.SEEK_SET)
        self._mapping = mmap.mmap(-1, buffer_bytes)  # anonymous: page-aligned
        self._buffer = np.frombuffer(self._mapping, dtype=np.uint8)
        self._filled = 0  # bytes waiting in the buffer
        self._flushed = start or 0  # offset of the buffer's first byte in the file

    def tell(self) -> int:
        return self._flushed + self._filled

    def write(self, data) -> None:
        """Append a bytes-like object (copied into the buffer; numpy releases the GIL for the copy)."""
        source = np.frombuffer(data, dtype=np.uint8)
        while source.size:
            room = self._buffer.size - self._filled
            take = min(room, source.size)
            np.copyto(self._buffer[self._filled:self._filled + take], source[:take])
            self._filled += take
            source = source[take:]
            if self._filled == self._buffer.size:
                self._flush(self._filled)

    def pad_to(self, alignment: int) -> None:
        """Append zeros up to the next multiple of `alignment` bytes."""
        gap = -self.tell() % alignment
        while gap:
            take = min(gap, self._buffer.size - self._filled)
            self._buffer[self._filled:self._filled + take] = 0
            self._filled += take
            gap -= take
            if self._filled == self._buffer.size:
                self._flush(self._filled)

    def close(self) -> None:
        """Write what is buffered and close; a new file holds exactly `tell()` bytes, one written
        from `start` at least that many (its last block is written whole, padded with zeros)."""
        if self._fd < 0:
            return
        try:
            size = self.tell()
            tail = self._filled
            if tail:
                padded = -(-tail // BLOCK) * BLOCK
                self._buffer[tail:padded] = 0
                self._flush(padded)
                if self._exact_size:
                    os.ftruncate(self._fd, size)
        finally:
            self._release()

    def _flush(self, nbytes: int) -> None:
        view = memoryview(self._mapping)[:nbytes]
        try:
            while view:
                view = view[self._write_once(view):]
        finally:
            view.release()
        self._flushed += self._filled  # the bytes given; a padded last block counts only its own
        self._filled = 0

    def _write_once(self, view: memoryview) -> int:
        try:
            return os.write(self._fd, view)
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            # the file system took O_DIRECT at open but refuses its writes: through the page cache
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_DIRECT)
            self.direct = False
            return os.write(self._fd, view)

    def discard(self) -> None:
        """Close without writing what is buffered (the caller removes or rewrites the file)."""
        if self._fd >= 0:
            self._release()

    def _release(self) -> None:
        os.close(self._fd)
        self._fd = -1
        del self._buffer
        self._mapping.close()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
