"""Lazy, safetensors-only access to a model folder's weights.

Opening a checkpoint reads only the safetensors headers (names, dtypes, shapes). Tensor data
is read on request, one tensor at a time, so a model larger than memory can be walked layer
by layer. A `ReadMeter` counts what was read and how much of it is still alive, which is how
the tests prove that streaming holds no more than one layer at once.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError, safe_open

from moe_compile.dtypes import element_type
from moe_compile.errors import InvalidInput, one_line
from moe_compile.finite import check_finite_tensor

INDEX_FILE = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "consolidated.00.pth")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        known = element_type(safetensors=self.dtype)
        return count * (known.itemsize if known else 4)


class ReadMeter:
    """Bytes read from disk, and the bytes of tracked tensors still alive (now and at peak)."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.live_bytes = 0
        self.peak_live_bytes = 0
        # Keyed by id: tensors compare element-wise, so they cannot sit in a WeakSet.
        self._tracked: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor` as live until it is garbage; a tensor already tracked counts once."""
        if self._tracked.get(id(tensor)) is tensor:
            return
        nbytes = tensor.numel() * tensor.element_size()
        self._tracked[id(tensor)] = tensor
        self.live_bytes += nbytes
        self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
        weakref.finalize(tensor, self._release, nbytes)

    def _release(self, nbytes: int) -> None:
        self.live_bytes -= nbytes


def name_outside_folder(name: object) -> str | None:
    """Why a file name that a model folder gives (a shard in its index) does not stay inside the
    folder, or None. The check is on the name as written: relative, no `..`, no drive; where a
    symlink inside the folder then lands is not checked, so a Hugging Face cache snapshot (whose
    files are symlinks to ../../blobs/...) keeps working."""
    if not isinstance(name, str) or not name:
        return "which is not a file name"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in PureWindowsPath(name).parts:  # Windows parsing splits on both / and \\
        return "which leads out of the folder through '..'"
    return None


class SafetensorsCheckpoint:
    """The tensor index of a model folder (single file or sharded), with lazy reads."""

    def __init__(self, folder: Path, meter: ReadMeter | None = None) -> None:
        self.folder = folder
        self.meter = meter or ReadMeter()
        self.index: dict[str, TensorInfo] = {}
        self._finite: set[str] = set()  # tensors already checked for NaN and infinity
        self.files = self._weight_files()
        for file in self.files:
            self._index_file(file)

    def _weight_files(self) -> list[Path]:
        index_path = self.folder / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InvalidInput(f"{index_path}: not a valid safetensors index ({exc.__class__.__name__}: {exc})") from None
            for name in names:
                problem = name_outside_folder(name)
                if problem:
                    raise InvalidInput(f"{index_path} names shard {name!r}, {problem}; every file a model folder "
                                       "names must be inside it")
            missing = [name for name in names if not (self.folder / name).is_file()]
            if missing:
                raise InvalidInput(f"{index_path} names shard '{missing[0]}', which is not in {self.folder}")
            return [self.folder / name for name in names]
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        pickled = [name for name in _PICKLE_WEIGHTS if (self.folder / name).exists()]
        if pickled:
            raise InvalidInput(
                f"{self.folder} holds only pickle weights ({pickled[0]}); moe-compile reads safetensors only: "
                "convert them with transformers' save_pretrained(safe_serialization=True)")
        raise InvalidInput(f"{self.folder} has no *.safetensors weights")

    def _index_file(self, file: Path) -> None:
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():
                    if name in self.index:
                        raise InvalidInput(f"tensor '{name}' is in both {self.index[name].file.name} and {file.name}; "
                                           "a checkpoint names each tensor once")
                    tensor = handle.get_slice(name)
                    self.index[name] = TensorInfo(file, tensor.get_dtype(), tuple(tensor.get_shape()))
        except (SafetensorError, OSError) as exc:
            raise InvalidInput(f"{file} is not a readable safetensors file ({one_line(exc)})") from None

    def has(self, name: str) -> bool:
        return name in self.index

    def require(self, names: list[str]) -> None:
        """Fail with the first name the checkpoint lacks."""
        for name in names:
            if name not in self.index:
                raise InvalidInput(f"{self.folder}: tensor '{name}' is missing from the checkpoint")

    def nbytes(self, prefix: str) -> int:
        """Bytes of all tensors whose name starts with `prefix` (read from headers only)."""
        return sum(info.nbytes for name, info in self.index.items() if name.startswith(prefix))

    def read(self, name: str) -> torch.Tensor:
        self.require([name])
        info = self.index[name]
        try:
            with safe_open(info.file, framework="pt") as handle:
                tensor = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise InvalidInput(f"{info.file}: cannot read tensor '{name}' ({one_line(exc)})") from None
        self.meter.bytes_read += info.nbytes
        self.meter.track(tensor)
        if name not in self._finite:  # once per tensor: a reference run layer by layer rereads them every pass
            check_finite_tensor(tensor, f"{info.file}: tensor '{name}'")
            self._finite.add(name)
        return tensor

    def signature(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """Names, dtypes and shapes, sorted: what the fingerprint's `sha256` hashes."""
        return [(name, info.dtype, info.shape) for name, info in sorted(self.index.items())]

    def content_sha256(self) -> str:
        """The weights' content hash (compiler/weights_hash.py): one read of every file."""
        from .weights_hash import weights_sha256

        return weights_sha256(self.files)
