"""Tuned launch configurations for the grouped-MoE kernels: JSON files, nearest-count lookup.

One file per (experts E, intermediate size N, device), named as vLLM names its fused_moe
configs, `E=60,N=1408,device_name=NVIDIA_H100_80GB_HBM3.json`, mapping a token count to the
block sizes, warps and stages that were fastest there:

    {"1": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4, "GROUP_M": 1}, ...}

`tune.py` writes them on the device they are for. Lookup takes the entry with the nearest token
count; with no file for the shape and device it falls back to `default_config` and warns once.
Pure Python: the TensorRT plugin reads the same files to offer them as tactics. The folder is
the package's configs/, or MOE_COMPILE_CONFIG_DIR where that is set (benchmarks/gpu_evidence.py
points every step at the tables it has just tuned).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_compile.errors import InvalidInput

CONFIG_DIR = Path(os.environ.get("MOE_COMPILE_CONFIG_DIR") or Path(__file__).parent / "configs")


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of the two GEMM kernels. BLOCK_M is also the alignment of the expert groups."""

    BLOCK_M: int
    BLOCK_N: int
    BLOCK_K: int
    num_warps: int = 4
    num_stages: int = 3
    GROUP_M: int = 8  # row blocks a group of programs takes across all column blocks (L2 reuse)

    def __post_init__(self):
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            value = getattr(self, name)
            if value < 16 or value & (value - 1):
                raise InvalidInput(f"{name}={value} must be a power of two >= 16 (tl.dot's smallest tile)")

    def as_dict(self) -> dict:
        return asdict(self)


def config_file_name(experts: int, inter: int, device_name: str) -> str:
    return f"E={experts},N={inter},device_name={device_name.replace(' ', '_')}.json"


def default_config(tokens: int, experts: int, top_k: int) -> KernelConfig:
    """Untuned: small row blocks when each expert sees few rows (decode), big ones for prefill."""
    rows_per_expert = tokens * top_k / experts
    if rows_per_expert <= 16:
        return KernelConfig(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=4, GROUP_M=1)
    if rows_per_expert <= 128:
        return KernelConfig(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4, GROUP_M=8)
    return KernelConfig(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, GROUP_M=8)


@functools.cache
def _read_table(path: Path) -> dict[int, KernelConfig] | None:
    """The table at `path`, None if there is none; read once (the op looks it up on every call)."""
    if not path.is_file():
        return None
    try:
        return {int(tokens): KernelConfig(**entry) for tokens, entry in json.loads(path.read_text()).items()}
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path}: not a tuned-config table ({exc})") from exc


@functools.cache
def _warn_untuned(name: str) -> None:
    warnings.warn(f"no tuned grouped-MoE config {name}; using the default (run "
                  "`python -m moe_compile.plugins.grouped_moe.tune` on this device)", stacklevel=3)


def tuned_table(experts: int, inter: int, device_name: str, directory: Path = CONFIG_DIR) -> dict[int, KernelConfig]:
    """The tuned table for the shape and device (token count -> config); empty if there is none."""
    return _read_table(directory / config_file_name(experts, inter, device_name)) or {}


def lookup_config(tokens: int, experts: int, inter: int, top_k: int, device_name: str,
                  directory: Path = CONFIG_DIR) -> KernelConfig:
    """The tuned config for the nearest token count (ties to the smaller), or the default with a warning."""
    name = config_file_name(experts, inter, device_name)
    table = _read_table(directory / name)
    if table is None:
        _warn_untuned(name)
        return default_config(tokens, experts, top_k)
    return table[min(table, key=lambda count: (abs(count - tokens), count))]


def write_table(path: Path, table: dict[int, KernelConfig]) -> None:
    """Write a tuned table, token counts ascending."""
    from moe_compile.atomic import write_text_atomic

    write_text_atomic(path, json.dumps({str(t): table[t].as_dict() for t in sorted(table)}, indent=2) + "\n")
    _read_table.cache_clear()
