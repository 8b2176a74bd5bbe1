"""Grids, scratch-buffer sizes and constexprs of the six grouped-MoE kernels, from the shapes alone.

Pure Python (no torch, no triton): the Python launcher and the TensorRT plugin (which launches
the same kernels compiled ahead of time, with symbolic grids) both read their launch geometry
here, so the two cannot drift apart. Every size is a worst case over all routings: nothing
depends on where the tokens go, so nothing waits for the device.

The token count may be a symbolic size (TensorRT's shape expressions): sizes are then built
with `+ - * //` (the symbolic operand on the left) and the plan's `SizeOps` (ceil-division,
minimum), which are the operations TensorRT's expressions have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from moe_compile.grouped_moe_op.attributes import ACTIVATIONS, GroupedMoEAttributes
from .configs import KernelConfig

# Elements of the route kernel's [BLOCK_T, BLOCK_E] tile: enough tokens a program to amortise
# the top-k rounds, few enough to stay in registers.
ROUTE_TILE = 2048
MAX_ROUTE_TOKENS = 16
SCAN_CHUNKS = 64  # chunk rows the scan kernel reads a round
SCAN_BLOCKS = 64  # row blocks the scan kernel assigns an expert a round
COMBINE_BLOCK_H = 1024
ROUTE_BLOCK_HC = 128  # hidden columns the route kernel checks for NaN/Inf a round


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class SizeOps:
    """How sizes combine: ceil-division and minimum of ints, or of symbolic sizes."""

    cdiv: Callable
    minimum: Callable


INT_OPS = SizeOps(cdiv=cdiv, minimum=min)


@dataclass(frozen=True)
class LaunchPlan:
    tokens: int  # or a symbolic size, with ops to match
    experts: int
    hidden: int
    inter: int
    top_k: int
    n_group: int
    config: KernelConfig
    # One chunk of tokens: route aligns alone (four launches). Off for the TensorRT engine,
    # whose token count is only known at run time, so its launches are always the six.
    decode_shortcut: bool = True
    # Rows each expert's group is padded to; the GEMMs' BLOCK_M must divide it. None: BLOCK_M (the
    # PyTorch launcher, which picks a config per call). The TensorRT engine aligns for the largest
    # BLOCK_M it may use, so that the GEMM stages can take a smaller one per optimization profile.
    align_m: int | None = None
    ops: SizeOps = field(default=INT_OPS, compare=False, repr=False)

    @property
    def block_e(self) -> int:
        return next_power_of_2(self.experts)

    @property
    def block_g(self) -> int:
        return next_power_of_2(self.n_group)

    @property
    def block_t(self) -> int:
        """Tokens a route program handles (one chunk of slots for the alignment)."""
        return max(1, min(MAX_ROUTE_TOKENS, ROUTE_TILE // self.block_e))

    @property
    def slots(self) -> int:
        return self.tokens * self.top_k

    @property
    def chunks(self) -> int:
        return self.ops.cdiv(self.tokens, self.block_t)

    @property
    def slots_per_chunk(self) -> int:
        return self.block_t * self.top_k

    @property
    def single_chunk(self) -> bool:
        """One route program aligns everything itself: the scan and scatter kernels are not launched."""
        return self.decode_shortcut and self.chunks == 1

    @property
    def alignment(self) -> int:
        return self.align_m or self.config.BLOCK_M

    def __post_init__(self):
        if self.alignment % self.config.BLOCK_M:
            raise ValueError(f"BLOCK_M={self.config.BLOCK_M} does not divide the alignment {self.alignment}")

    @property
    def max_padded(self) -> int:
        """Rows after padding each used expert's group to the alignment: at most min(S, E) groups are used."""
        return self.slots + self.ops.minimum(self.slots, self.experts) * (self.alignment - 1)

    @property
    def max_blocks(self) -> int:
        """Groups of `alignment` rows (block_expert's length)."""
        return self.ops.cdiv(self.max_padded, self.alignment)

    @property
    def gemm_blocks(self) -> int:
        """Row blocks of BLOCK_M rows the GEMM grids cover."""
        return self.ops.cdiv(self.max_padded, self.config.BLOCK_M)

    def grids(self) -> dict[str, tuple[int, ...]]:
        """The launches in order, with their grids."""
        alignment = {} if self.single_chunk else {"scan": (1,), "scatter": (self.chunks,)}
        return {
            "route": (self.chunks,),
            **alignment,
            "gate_up": (self.gemm_blocks * cdiv(self.inter, self.config.BLOCK_N),),
            "down": (self.gemm_blocks * cdiv(self.hidden, self.config.BLOCK_N),),
            "combine": (self.tokens, cdiv(self.hidden, COMBINE_BLOCK_H)),
        }

    def buffers(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Scratch tensors: name -> (shape, dtype), "act" being the activation dtype."""
        return {
            "topk_ids": ((self.slots,), "int32"),
            "topk_weights": ((self.slots,), "float32"),
            "slot_rank": ((self.slots,), "int32"),
            "chunk_counts": ((self.chunks, self.experts), "int32"),
            "chunk_offsets": ((self.chunks, self.experts), "int32"),
            "nonfinite": ((self.tokens,), "int32"),
            "expert_counts": ((self.experts,), "int32"),
            "expert_start": ((self.experts,), "int32"),
            "block_expert": ((self.max_blocks,), "int32"),
            "sorted_ids": ((self.max_padded,), "int32"),
            "inter": ((self.slots, self.inter), "act"),
            "per_slot": ((self.slots, self.hidden), "act"),
        }

    def constexprs(self, attrs: GroupedMoEAttributes, *, score_bias: bool, gate_up_bias: bool, down_bias: bool,
                   fp32: bool) -> dict[str, dict[str, object]]:
        """Each kernel's constexprs, by launch name; which optional inputs exist, and whether the
        activations are fp32 (exact fp32 products, no TF32; the setting does not apply to 16-bit)."""
        config = self.config
        gemm = {"HIDDEN": self.hidden, "INTER": self.inter, "PRECISION": "ieee" if fp32 else "tf32",
                "BLOCK_M": config.BLOCK_M, "BLOCK_N": config.BLOCK_N, "BLOCK_K": config.BLOCK_K,
                "GROUP_M": config.GROUP_M, "ALIGN_M": self.alignment}
        return {
            "route": {"K": attrs.top_k, "SIGMOID": attrs.scoring == "sigmoid", "NORMALIZE": bool(attrs.normalize_topk),
                      "ROUTED_SCALING": float(attrs.routed_scaling), "HAS_SCORE_BIAS": score_bias,
                      "N_GROUP": self.n_group, "TOPK_GROUP": attrs.topk_group,
                      "GROUP_SUM_TOP2": attrs.group_scoring == "sum_top2", "SINGLE_CHUNK": self.single_chunk,
                      "HIDDEN": self.hidden, "ALIGN_M": self.alignment, "BLOCK_B": SCAN_BLOCKS,
                      "BLOCK_T": self.block_t, "BLOCK_E": self.block_e, "BLOCK_G": self.block_g,
                      "BLOCK_HC": ROUTE_BLOCK_HC},
            "scan": {"ALIGN_M": self.alignment, "BLOCK_C": SCAN_CHUNKS, "BLOCK_E": self.block_e,
                     "BLOCK_B": SCAN_BLOCKS},
            "scatter": {"SLOTS_PER_CHUNK": self.slots_per_chunk, "BLOCK_S": next_power_of_2(self.slots_per_chunk)},
            "gate_up": {"SWIGLU_ALPHA": float(attrs.swiglu_alpha), "SWIGLU_LIMIT": float(attrs.swiglu_limit),
                        "ACTIVATION": ACTIVATIONS.index(attrs.activation), "HAS_BIAS": gate_up_bias, **gemm},
            "down": {"HAS_BIAS": down_bias, **gemm},
            "combine": {"K": attrs.top_k, "BLOCK_H": COMBINE_BLOCK_H},
        }

    def options(self) -> dict[str, int]:
        """Compile options of the two GEMM kernels (the others take Triton's defaults)."""
        return {"num_warps": self.config.num_warps, "num_stages": self.config.num_stages}
