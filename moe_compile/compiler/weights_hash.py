"""The content hash of a checkpoint's weights: what tells two fine-tunes of one config apart.

A plan, a profile and an exported model carry it (`weights_sha256` in the fingerprint), so one
made for some weights is refused for others with the same config and tensor shapes.

It is computed from the safetensors files themselves, one sequential read of each file in
chunks (nothing of it is kept, nothing is written beside the model): every tensor's data gets
its own SHA-256, and the hash is the SHA-256 over (name, dtype, shape, data digest) in name
order. So it depends on the tensors alone, not on how they are split into shards or ordered
inside a file, nor on a file's free-form metadata.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

from moe_compile.errors import InvalidInput

_CHUNK_BYTES = 16 << 20
_HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


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


def _file_digests(file: Path, buffer: memoryview, advance: Callable[[int], None]) -> dict[str, tuple]:
    """{tensor name: (dtype, shape, sha256 of its bytes)} for one file, read front to back once."""
    digests = {}
    with open(file, "rb") as handle:
        for name, dtype, shape, start, end in _tensor_ranges(file, handle):
            handle.seek(start)
            digest = hashlib.sha256()
            remaining = end - start
            while remaining:
                count = handle.readinto(buffer[:min(remaining, len(buffer))])
                if not count:
                    raise InvalidInput(f"{file} is truncated: tensor '{name}' ends past the end of the file")
                digest.update(buffer[:count])
                remaining -= count
                advance(count)
            digests[name] = (dtype, shape, digest.hexdigest())
    return digests


def weights_sha256(files: list[Path], show_progress: bool = True) -> str:
    """The content hash of the tensors in `files` (see the module docstring)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)  # stdout may carry --json
    buffer = memoryview(bytearray(_CHUNK_BYTES))
    digests: dict[str, tuple] = {}
    columns = (TextColumn("weights sha256"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=not (show_progress and console.is_terminal)) as progress:
        task = progress.add_task("hash", total=sum(file.stat().st_size for file in files))
        for file in files:
            digests.update(_file_digests(file, buffer, lambda count: progress.advance(task, count)))
    combined = hashlib.sha256()
    for name in sorted(digests):
        dtype, shape, digest = digests[name]
        combined.update(json.dumps([name, dtype, shape, digest]).encode())
    return combined.hexdigest()
