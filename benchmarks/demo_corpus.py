"""The demo model's text: the reStructuredText documentation of a pinned PyPI sdist.

docutils 0.21.2 (`pip download --no-binary :all:`, checked against its sha256) ships 54 prose
files under docs/ (about 1.3 MB). Files are split, never lines: a file goes to the held-out
split when sha256(its path) % 10 == 0, to the calibration split (used by the expert-pruning
baseline to count expert use) when it is 1, and to training otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "docutils"
VERSION = "0.21.2"
SDIST_SHA256 = "3a6b18732edf182daa3cd12775bbb338cf5691468f91eeeb109deff6ebfa986f"
FILES = "docs/**/*.txt"
HELD_OUT, CALIBRATION = 0, 1  # sha256(path) % 10
DOCUMENT_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    train: dict[str, str]  # path inside the sdist -> text
    held_out: dict[str, str]
    calibration: dict[str, str]
    provenance: dict

    @staticmethod
    def joined(files: dict[str, str]) -> str:
        return DOCUMENT_SEPARATOR.join(files[path] for path in sorted(files))


def _split_of(path: str) -> int:
    return int(hashlib.sha256(path.encode()).hexdigest(), 16) % 10


def fetch_sdist(cache: Path) -> Path:
    """Download (once) and unpack the pinned sdist; refuse it if its hash differs. Both land in
    the cache by a rename from a folder of their own, so runs started side by side never read a
    half-downloaded archive or a half-unpacked tree."""
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{PACKAGE}-{VERSION}.tar.gz"
    if not archive.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            f"{PACKAGE}=={VERSION}", "-d", scratch], check=True)
            os.replace(Path(scratch) / archive.name, archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{archive}: sha256 {digest}, expected {SDIST_SHA256}")
    root = cache / f"{PACKAGE}-{VERSION}"
    if not root.is_dir():
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            try:
                os.rename(Path(scratch) / root.name, root)
            except OSError:
                if not root.is_dir():  # else another run unpacked it first: the same files
                    raise
    return root


def load_corpus(cache: Path) -> Corpus:
    root = fetch_sdist(cache)
    files = {str(path.relative_to(root)): path.read_text(encoding="utf-8") for path in sorted(root.glob(FILES))}
    splits: dict[int, dict[str, str]] = {}
    for path, text in files.items():
        split = _split_of(path)
        splits.setdefault(split if split in (HELD_OUT, CALIBRATION) else -1, {})[path] = text
    listing = "\n".join(f"{path} {hashlib.sha256(text.encode()).hexdigest()}" for path, text in files.items())
    provenance = {
        "package": PACKAGE, "version": VERSION, "source": f"pip download --no-binary :all: {PACKAGE}=={VERSION}",
        "sdist_sha256": SDIST_SHA256, "files": FILES, "file_count": len(files),
        "file_list_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "split": "sha256(path) % 10: 0 held-out, 1 calibration, else train",
        "held_out_files": sorted(splits[HELD_OUT]), "calibration_files": sorted(splits[CALIBRATION]),
        "train_file_count": len(splits[-1]),
        "chars": {"train": sum(map(len, splits[-1].values())), "held_out": sum(map(len, splits[HELD_OUT].values())),
                  "calibration": sum(map(len, splits[CALIBRATION].values()))},
    }
    return Corpus(train=splits[-1], held_out=splits[HELD_OUT], calibration=splits[CALIBRATION], provenance=provenance)
