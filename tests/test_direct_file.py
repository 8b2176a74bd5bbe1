"""direct_file.DirectFile: the bytes given, in order, whatever the buffer's edges and the file system."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import moe_compile.direct_file as direct_file
from moe_compile.direct_file import BLOCK, DirectFile


def _pieces(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = [1, 4095, 4096, 4097, 3 * BLOCK + 5, 2 * 8192 + 1, 0, 77, 40000]
    return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]


@pytest.mark.parametrize("direct", [True, False])
def test_writes_exactly_the_bytes_given_with_aligned_gaps(tmp_path, direct):
    """Pieces smaller and larger than the buffer, across its edges, and zero gaps up to 4096
    bytes: the file is what an ordinary buffered write of the same would give."""
    path, expected = tmp_path / "data", bytearray()
    with DirectFile(path, buffer_bytes=2 * BLOCK, direct=direct) as out:
        for number, piece in enumerate(_pieces(0)):
            if number % 2:
                out.pad_to(BLOCK)
                expected += bytes(-len(expected) % BLOCK)
            out.write(memoryview(piece))
            expected += piece
            assert out.tell() == len(expected)
    assert path.read_bytes() == bytes(expected)


def test_a_file_of_whole_blocks_is_not_padded(tmp_path):
    path = tmp_path / "data"
    with DirectFile(path, buffer_bytes=BLOCK) as out:
        out.write(bytes(range(256)) * 48)  # 3 blocks
    assert path.stat().st_size == 3 * BLOCK


def test_an_error_leaves_the_buffer_unwritten(tmp_path):
    path = tmp_path / "data"
    with pytest.raises(RuntimeError), DirectFile(path, buffer_bytes=2 * BLOCK) as out:
        out.write(b"x" * 100)
        raise RuntimeError("stop")
    assert path.stat().st_size == 0


def test_a_file_system_that_refuses_o_direct_writes_is_written_through_the_cache(tmp_path, monkeypatch):
    """Some file systems open with O_DIRECT and then refuse its writes (EINVAL): the writer turns
    the flag off and writes the same bytes."""
    if not direct_file._DIRECT:
        pytest.skip("this system has no O_DIRECT")
    real_write, refused = os.write, []

    def refuse_direct(fd, data):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & direct_file._DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_file.os, "write", refuse_direct)
    path, pieces = tmp_path / "data", _pieces(1)
    with DirectFile(path, buffer_bytes=2 * BLOCK) as out:
        for piece in pieces:
            out.write(piece)
        assert not out.direct
    assert refused and path.read_bytes() == b"".join(pieces)


def test_other_write_errors_come_out(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_file.os, "write", full)
    with pytest.raises(OSError, match="No space"), DirectFile(tmp_path / "data", buffer_bytes=BLOCK) as out:
        out.write(b"y" * (BLOCK + 1))


@pytest.mark.parametrize("first", [1, BLOCK - 1, BLOCK, 3 * BLOCK + 17])
def test_two_writers_fill_one_file_each_from_its_offset(tmp_path, first):
    """What a streamed export does (export/early_experts.py): the MoE weights from offset 0, the
    rest from the block after them, at the same time; then the caller sets the file's size."""
    path, pieces = tmp_path / "data", _pieces(2)
    path.write_bytes(b"")
    second_start = -(-first // BLOCK) * BLOCK
    first_writer = DirectFile(path, buffer_bytes=2 * BLOCK, start=0)
    with DirectFile(path, buffer_bytes=2 * BLOCK, start=second_start) as second:
        first_writer.write(pieces[-1][:first])
        second.write(pieces[4])
        first_writer.close()
        end = second.tell()
    assert end == second_start + len(pieces[4]) and path.stat().st_size == -(-end // BLOCK) * BLOCK
    os.truncate(path, end)
    assert path.read_bytes() == pieces[-1][:first] + bytes(second_start - first) + pieces[4]
