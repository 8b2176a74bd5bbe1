"""Write outputs so that a failed run never leaves a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from moe_compile import interrupts
from moe_compile.errors import InvalidInput, one_line


def check_writable(out: str | os.PathLike) -> Path:
    """Raise InvalidInput unless a file can be written at `out`: before minutes of work, not
    after. Creates the missing parent folders, as the write would."""
    out = Path(out)
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}."):
            pass
    except OSError as exc:
        raise InvalidInput(f"cannot write --out {out} ({one_line(exc)})") from None
    return out


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike, *ours: Path) -> Iterator[None]:
    """An OSError from a write into `folder` (Python's file writes name no file: a full disk, a
    quota) -> InvalidInput naming `folder`. Errors that name a path not starting with one of
    `ours` (the staged paths) pass unchanged: they concern another file, which the CLI names."""
    try:
        yield
    except OSError as exc:
        if exc.filename and not any(str(exc.filename).startswith(str(path)) for path in ours):
            raise
        raise InvalidInput(f"cannot write into {folder} ({exc.strerror or one_line(exc)})") from None


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    The temporary lives in the same folder as the target, so the final rename is atomic on
    POSIX file systems. On any exception the temporary is removed and `target` is untouched.
    """
    target = Path(target)
    if directory:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        check_writable(target)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        interrupts.raise_if_received()
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


class Staging:
    """The outputs of one command, written first under a staging folder beside each and moved
    into place together by `commit`; see `all_or_none`."""

    def __init__(self, roots: dict[Path, Path]) -> None:
        self.roots = roots  # output folder -> its staging folder

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write `target` (one of the outputs given to all_or_none) until the commit."""
        target = Path(target)
        return self.roots[target.parent.resolve()] / target.name

    def commit(self) -> list[Path]:
        """Move every staged file onto its target (signals wait until all are moved)."""
        interrupts.raise_if_received()
        moved = []
        with interrupts.deferred():
            for folder, root in self.roots.items():
                for staged in sorted(root.iterdir()):
                    os.replace(staged, folder / staged.name)
                    moved.append(folder / staged.name)
        return moved


@contextlib.contextmanager
def all_or_none(*targets: str | os.PathLike) -> Iterator[Staging]:
    """For a command that writes several files: write them to `staging.path(target)` and call
    `staging.commit()` when all are good. An error, a signal or a block that ends without the
    commit removes every staged file; the targets keep what they held before. Each target is
    checked writable first, before any work."""
    paths = [check_writable(target) for target in targets]
    roots: dict[Path, Path] = {}
    try:
        for path in paths:
            folder = path.parent.resolve()
            if folder not in roots:
                roots[folder] = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging.", dir=folder))
        with writing_into(", ".join(str(path.parent) for path in paths[:1]), *roots.values()):
            yield Staging(roots)
    finally:
        for root in roots.values():
            shutil.rmtree(root, ignore_errors=True)
