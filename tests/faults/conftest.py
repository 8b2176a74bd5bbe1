"""What the fault suite shares: commands run in-process through the real CLI `main` (the
process boundary is tested only where it matters: signals, ports), the folder snapshot that
proves nothing new was written, altered copies of the session's tiny models, and a full disk."""

import contextlib
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from moe_compile.cli import main


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    def refused(self, *words: str, code: int = 2) -> None:
        """One line on stderr (mentioning `words`), the given exit code, no traceback."""
        lines = self.stderr.strip().splitlines()
        assert self.code == code, self.stderr
        assert len(lines) == 1 and lines[0].startswith("moe-compile: "), self.stderr
        assert "Traceback" not in self.stderr
        for word in words:
            assert word in lines[0], lines[0]


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> Outcome: `moe-compile argv` in this process."""
    def run(*argv) -> Outcome:
        code = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def _mount_tmpfs(mountpoint: Path) -> bool:
    """Mount a 1 MiB tmpfs at `mountpoint`; False where this machine does not allow it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                          capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def full_disk_root(tmp_path_factory):
    """A folder on a full file system: a 1 MiB tmpfs filled to the last page where this machine
    lets us mount one (root in a container, as in CI here), else None (test_full_disk_without_tmpfs
    then stands in: RLIMIT_FSIZE 0 in a subprocess, every write fails with EFBIG)."""
    mountpoint = tmp_path_factory.mktemp("full-disk")
    if not _mount_tmpfs(mountpoint):
        yield None
        return
    try:
        with (mountpoint / ".filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


@pytest.fixture
def full_disk(full_disk_root):
    """A fresh folder on the full file system (see full_disk_root)."""
    if full_disk_root is None:
        pytest.skip("cannot mount a tmpfs here; test_full_disk_without_tmpfs covers the same with RLIMIT_FSIZE")
    folder = full_disk_root / uuid.uuid4().hex[:8]
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
