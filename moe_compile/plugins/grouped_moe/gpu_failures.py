"""Routing the Triton kernels got wrong on a GPU, kept off them until the cause is known.

On an H100 (2026-12-05, docs/gpu-evidence.md) the kernel grid's sigmoid cases without
group-limited routing (sigmoid scores, a score bias, routed scaling) failed at 8, 60 and 64
experts and passed at 128. The same cases pass in Triton's CPU interpreter, and DeepSeek-V3's
group-limited sigmoid routing passed on the GPU. The failures' messages were not captured, so
the cause, and so whether other expert counts are safe, is not known. Such a layer runs the
PyTorch reference on CUDA (with a warning) and is refused by the TensorRT plugin: wrong numbers
are worse than slow ones. That covers e.g. Moonlight (DeepSeek-V3 layers with 64 experts and
one group).
"""

from __future__ import annotations

from moe_compile.grouped_moe_op.attributes import GroupedMoEAttributes

REASON = ("sigmoid routing without group-limited routing gave wrong results in the Triton kernels on an "
          "H100 (docs/gpu-evidence.md)")


def failed_on_gpu(attrs: GroupedMoEAttributes) -> bool:
    """Whether `attrs` is routing the kernels got wrong on a GPU (module docstring)."""
    return attrs.scoring == "sigmoid" and attrs.n_group <= 1
