"""The content hash of a checkpoint's weights: what tells two fine-tunes of one config apart.

A plan, a profile and an exported model carry it (`weights_sha256` in the fingerprint), so one
made for some weights is refused for others with the same config and tensor shapes.

It is computed from the safetensors files themselves, one read of each byte in 16 MiB chunks
(nothing is written beside the model): every tensor's data gets its own SHA-256, on a few
threads at once, and the hash is the SHA-256 over (name, dtype, shape, data digest) in name
order. So it depends on the tensors alone, not on how they are split into shards or ordered
inside a file, nor on a file's free-form metadata. Each file's tensor digests are remembered in
the user's cache folder while the file stays unchanged (digest_cache.py), so the commands that
follow one another on a checkpoint read it for its hash once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from moe_compile.errors import InvalidInput

from .digest_cache import Digests, cached_digests, remember_digests

_CHUNK_BYTES = 16 << 20
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


def _workers() -> int:
    """Threads hashing at once: hashlib releases the GIL, so tensors hash in parallel (SHA-256 is
    CPU-bound, ~0.25-2 GB/s a core, slower than a disk's sequential read)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _tensor_ranges(file: Path, handle) -> list[tuple[str, str, list[int], int, int]]:
    """(name, dtype, shape, absolute start, absolute end) of every tensor in `file`, by offset."""
    raw = handle.read(8)
    if len(raw) != 8:
        raise InvalidInput(f"{file} is not a readable safetensors file (shorter than its header length)")
    (header_len,) = struct.unpack("<Q", raw)
    if header_len > _HEADER_LIMIT:
        raise InvalidInput(f"{file} is not a readable safetensors file (header of {header_len} bytes)")
    try:
        header = json.loads(handle.read(header_len))
        entries = [(name, info["dtype"], list(info["shape"]), *info["data_offsets"])
                   for name, info in header.items() if name != "__metadata__"]
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"{file} is not a readable safetensors file (header: {exc.__class__.__name__})") from None
    data_start = 8 + header_len
    return sorted(((name, dtype, shape, data_start + begin, data_start + end)
                   for name, dtype, shape, begin, end in entries), key=lambda entry: entry[3])


def _tensor_digest(fd: int, file: Path, name: str, start: int, end: int, buffers: threading.local,
                   advance: Callable[[int], None]) -> str:
    """SHA-256 of bytes [start, end) of an open file, read with pread in chunks (thread-safe:
    no shared file position), into this thread's one reusable buffer."""
    if not hasattr(buffers, "chunk"):
        buffers.chunk = memoryview(bytearray(_CHUNK_BYTES))
    digest = hashlib.sha256()
    offset = start
    while offset < end:
        count = os.preadv(fd, [buffers.chunk[:min(end - offset, _CHUNK_BYTES)]], offset)
        if not count:
            raise InvalidInput(f"{file} is truncated: tensor '{name}' ends past the end of the file")
        digest.update(buffers.chunk[:count])
        offset += count
        advance(count)
    return digest.hexdigest()


def weights_sha256(files: list[Path], show_progress: bool = True) -> str:
    """The content hash of the tensors in `files` (see the module docstring)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    started = time.time()
    digests: Digests = {}
    hashed = {}  # file -> its stat when its hashing began
    for file in files:
        remembered = cached_digests(file)
        if remembered is None:
            hashed[file] = file.stat()
        else:
            digests.update(remembered)
    console = Console(stderr=True)  # stdout may carry --json
    buffers = threading.local()
    columns = (TextColumn("weights sha256"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not (show_progress and hashed and console.is_terminal)) as progress, \
            contextlib.ExitStack() as open_files, ThreadPoolExecutor(max_workers=_workers()) as pool:
        task = progress.add_task("hash", total=sum(stat.st_size for stat in hashed.values()))
        jobs = {}
        for file in hashed:
            fd = os.open(file, os.O_RDONLY)
            open_files.callback(os.close, fd)
            with open(file, "rb") as handle:
                ranges = _tensor_ranges(file, handle)
            for name, dtype, shape, start, end in ranges:  # by offset: each file is read front to back
                jobs[file, name] = (dtype, shape, pool.submit(_tensor_digest, fd, file, name, start, end, buffers,
                                                              lambda count: progress.advance(task, count)))
        per_file: dict[Path, Digests] = {file: {} for file in hashed}
        for (file, name), (dtype, shape, job) in jobs.items():
            per_file[file][name] = (dtype, shape, job.result())
    for file, file_digests in per_file.items():
        remember_digests(file, hashed[file], started, file_digests)
        digests.update(file_digests)
    combined = hashlib.sha256()
    for name in sorted(digests):
        dtype, shape, digest = digests[name]
        combined.update(json.dumps([name, dtype, shape, digest]).encode())
    return combined.hexdigest()
