"""The weights' content hash remembers each file's tensor digests between commands
(compiler/digest_cache.py), and never hands back digests of a file that has changed since."""

import json
import os
import time

import pytest
from safetensors.torch import save_file
import torch

from moe_compile.compiler import digest_cache, weights_hash
from moe_compile.compiler.weights_hash import weights_sha256


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MOE_COMPILE_CACHE_DIR", str(folder))
    monkeypatch.delenv("MOE_COMPILE_CACHE", raising=False)
    return folder


def _shards(folder, seed=0):
    folder.mkdir()
    generator = torch.Generator().manual_seed(seed)
    files = []
    for shard in range(2):
        file = folder / f"model-{shard}.safetensors"
        save_file({f"t{shard}.{i}": torch.randn(64, 32, generator=generator) for i in range(3)}, file)
        files.append(file)
    return files


def _entries(cache) -> list:
    return sorted((cache / "weights-sha256").glob("*.json")) if cache.exists() else []


def _no_reads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read although its digest was remembered")

    monkeypatch.setattr(weights_hash, "_tensor_digest", refuse)


def test_a_second_hash_reads_nothing_and_agrees(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    files = _shards(tmp_path / "model")
    first = weights_sha256(files, show_progress=False)
    assert len(_entries(cache)) == 2
    _no_reads(monkeypatch)
    assert weights_sha256(files, show_progress=False) == first


def test_the_cached_hash_equals_the_hash_without_a_cache(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    files = _shards(tmp_path / "model")
    weights_sha256(files, show_progress=False)
    cached = weights_sha256(files, show_progress=False)
    monkeypatch.setenv("MOE_COMPILE_CACHE", "off")
    assert weights_sha256(files, show_progress=False) == cached


def test_a_file_rewritten_in_place_with_its_old_mtime_is_hashed_again(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    files = _shards(tmp_path / "model")
    before = weights_sha256(files, show_progress=False)
    stat = files[0].stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor: same size, same inode
    with open(files[0], "r+b") as handle:
        handle.write(data)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the change time cannot be set back
    assert weights_sha256(files, show_progress=False) != before


def test_a_file_changed_just_before_its_hash_is_not_remembered(cache, tmp_path):
    files = _shards(tmp_path / "model")  # written now: within RACY_SECONDS of the hash
    weights_sha256(files, show_progress=False)
    assert _entries(cache) == []


def test_off_remembers_nothing(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    monkeypatch.setenv("MOE_COMPILE_CACHE", "off")
    weights_sha256(_shards(tmp_path / "model"), show_progress=False)
    assert not cache.exists()


def test_a_broken_or_foreign_entry_is_ignored(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    files = _shards(tmp_path / "model")
    expected = weights_sha256(files, show_progress=False)
    first, second = _entries(cache)
    first.write_text("{not json")
    entry = json.loads(second.read_text())
    entry["tensors"][0][3] = "0" * 64  # a wrong digest under another file's name
    entry["file"] = "/elsewhere/model.safetensors"
    second.write_text(json.dumps(entry))
    assert weights_sha256(files, show_progress=False) == expected


def test_an_unwritable_cache_costs_nothing_but_time(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("MOE_COMPILE_CACHE_DIR", str(blocker))
    monkeypatch.setattr(digest_cache, "RACY_SECONDS", 0.0)
    files = _shards(tmp_path / "model")
    assert weights_sha256(files, show_progress=False) == weights_sha256(files, show_progress=False)
    assert list(tmp_path.glob("**/*.tmp")) == []
