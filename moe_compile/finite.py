"""Non-finite values are refused where they enter, with the name of what carries them.

A NaN or infinity in a weight spreads silently: the profile stores NaN, the planner finds no
k that fits, JSON output stops being JSON. So each place a number comes in checks it once:
weights as they are read (the tensor's name), a layer's sensitivities (the layer), a
perplexity (the text it was measured on).
"""

from __future__ import annotations

import math

import torch

from moe_compile.errors import InvalidInput


_CHUNK_ELEMENTS = 1 << 24  # isfinite of a bf16 tensor works in fp32: 64 MB at a time, not 4 bytes per element


def nonfinite_count(tensor: torch.Tensor) -> int:
    """How many elements of a floating-point tensor are NaN or infinite (0 for integer tensors).

    Counted a chunk at a time: on a whole 151936 x 2048 bf16 embedding (594 MB, mapped from
    the file) one `isfinite` took 2.6 GB of anonymous memory, which was the peak of a streamed
    export."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return 0
    flat = tensor.reshape(-1)
    return sum(_chunk_nonfinite_count(flat[start:start + _CHUNK_ELEMENTS])
               for start in range(0, flat.numel(), _CHUNK_ELEMENTS))


def _chunk_nonfinite_count(chunk: torch.Tensor) -> int:
    """The smallest and largest element are both finite exactly when every element is: `aminmax`
    returns NaN if any element is NaN, and an infinity is its own min or max. One pass that reads
    each element once and allocates nothing the size of the chunk (about ten times faster than
    summing `chunk * 0`, which was ten times faster than isfinite's mask, on a 2-core CPU; every
    byte an export writes passes here); the elements are counted only when something is found."""
    smallest, largest = torch.aminmax(chunk)
    if math.isfinite(float(smallest)) and math.isfinite(float(largest)):
        return 0
    return int((~torch.isfinite(chunk)).sum())


def check_finite_tensor(tensor: torch.Tensor, where: str) -> None:
    """InvalidInput naming `where` if `tensor` holds NaN or infinity."""
    count = nonfinite_count(tensor)
    if count:
        raise InvalidInput(f"{where} holds {count} non-finite value{'s' if count > 1 else ''} (NaN or infinity) "
                           f"of {tensor.numel()}; moe-compile needs finite weights")


def check_finite_parameters(module: torch.nn.Module, where: str) -> None:
    """Every parameter and buffer of a loaded model, each named on failure."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        check_finite_tensor(tensor.detach(), f"{where}: tensor '{name}'")


def check_finite_values(values: dict, where: str) -> None:
    """A mapping of computed numbers (k -> Δ(k), name -> metric): InvalidInput naming the first non-finite one."""
    for key, value in values.items():
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {key} is {value} (not finite); the weights or the input overflow")
