"""Helpers the fault tests import by name (not from conftest.py: with several conftest.py
files, `from conftest import` finds whichever one pytest loaded last)."""

import json
import os
from pathlib import Path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included), by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def altered_model(source: Path, folder: Path, config: dict | None = None, tensors=None) -> Path:
    """A copy of the model folder `source` with config.json fields replaced (None: removed) and
    safetensors tensors changed by `tensors(dict) -> None` (the weights file is linked, not copied,
    when unchanged)."""
    folder.mkdir(parents=True)
    doc = json.loads((source / "config.json").read_text())
    for key, value in (config or {}).items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (folder / "config.json").write_text(json.dumps(doc))
    if tensors is None:
        os.symlink(source / "model.safetensors", folder / "model.safetensors")
    else:
        from safetensors.torch import load_file, save_file

        weights = load_file(source / "model.safetensors")
        tensors(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder
