"""Versions of the packages a measured result depends on, for the JSON every benchmark writes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_versions(*packages: str) -> dict[str, str | None]:
    """torch and its CUDA (None on a CPU build), then each package's installed version (None if absent)."""
    import torch

    found: dict[str, str | None] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
