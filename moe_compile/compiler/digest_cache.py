"""Tensor digests of safetensors files, remembered between commands.

Every command that writes or checks a plan, a profile or an export needs the weights' content
hash (weights_hash.py), one read of every byte of the checkpoint: seconds for a few GB, minutes
for a 1 TB model, and a user runs profile, plan, export and validate on the same files one after
another. So the per-tensor digests of each file are kept in a small JSON file under the user's
cache folder, keyed by the file's real path, and reused while the file is provably the one that
was hashed: same device, inode, size, modification time and change time (st_ctime cannot be set
back by a user, so rewriting a file in place and resetting its mtime still misses).

A file changed in the same clock tick as it was hashed could keep all of these (timestamps are
coarse: a few ms on Linux). As git does for its index, a file whose timestamps are within
`RACY_SECONDS` of the moment its hash began is hashed but not remembered.

Where: $MOE_COMPILE_CACHE_DIR, else $XDG_CACHE_HOME/moe-compile, else ~/.cache/moe-compile.
MOE_COMPILE_CACHE=off turns it off. A cache that cannot be read or written is ignored: it only
ever saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

RACY_SECONDS = 2.0
_VERSION = 1
Digests = dict[str, tuple[str, list[int], str]]  # tensor name -> (dtype, shape, sha256 of its bytes)


def cache_folder() -> Path | None:
    """The folder digests are kept in; None when caching is off."""
    if os.environ.get("MOE_COMPILE_CACHE", "").lower() in ("off", "0", "no", "false"):
        return None
    if os.environ.get("MOE_COMPILE_CACHE_DIR"):
        return Path(os.environ["MOE_COMPILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe-compile"


def file_identity(stat: os.stat_result) -> list[int]:
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _entry_path(folder: Path, file: Path) -> Path:
    key = hashlib.sha256(str(file.resolve()).encode()).hexdigest()
    return folder / "weights-sha256" / f"{key}.json"


def cached_digests(file: Path) -> Digests | None:
    """The digests remembered for `file` as it is now, or None."""
    folder = cache_folder()
    if folder is None:
        return None
    try:
        entry = json.loads(_entry_path(folder, file).read_text())
        if entry["version"] != _VERSION or entry["file"] != str(file.resolve()) \
                or entry["identity"] != file_identity(file.stat()):
            return None
        return {name: (dtype, list(shape), digest) for name, dtype, shape, digest in entry["tensors"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_digests(file: Path, before: os.stat_result, started: float, digests: Digests) -> None:
    """Keep `digests` for `file` if it is still as `before` (its stat when hashing began, at
    time `started`) and was last changed well before then; otherwise keep nothing."""
    folder = cache_folder()
    if folder is None:
        return
    try:
        now = file.stat()
        if file_identity(now) != file_identity(before) \
                or max(now.st_mtime_ns, now.st_ctime_ns) / 1e9 > started - RACY_SECONDS:
            return
        entry = {"version": _VERSION, "file": str(file.resolve()), "identity": file_identity(now),
                 "tensors": [[name, dtype, shape, digest] for name, (dtype, shape, digest) in sorted(digests.items())]}
        path = _entry_path(folder, file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as staged:
            try:
                json.dump(entry, staged)
                staged.close()
                os.replace(staged.name, path)
            except OSError:
                Path(staged.name).unlink(missing_ok=True)
                raise
    except OSError:
        return
