"""What a layer's top-k costs: active experts (the paper's budget), or predicted time.

A cost model maps (layer, k) to a cost. `ActiveExperts` counts k. The latency models give the
time of one GroupedMoE call at a token count: `MeasuredLatency` times the op on this machine
(whatever kernel is registered for the device), `RooflineLatency` predicts it from a device's
peak compute and memory bandwidth when that device is not at hand.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from moe_compile.compiler.ir import MoELayerSpec
from moe_compile.errors import InvalidInput
from moe_compile.grouped_moe_op import call_grouped_moe

# Dense bf16 tensor-core peak and HBM bandwidth from NVIDIA's datasheets (SXM parts).
ROOFLINE_DEVICES = {
    "h100": {"flops_per_s": 989e12, "bytes_per_s": 3.35e12},
    "h200": {"flops_per_s": 989e12, "bytes_per_s": 4.8e12},
}


class ActiveExperts:
    name = "sum-k"
    unit = "experts"

    def costs(self, spec: MoELayerSpec, ks: list[int]) -> dict[int, float]:
        return {k: float(k) for k in ks}

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit}


@dataclass
class RooflineLatency:
    """max(compute time, weight-streaming time) for `tokens` tokens with uniform routing."""

    device: str
    tokens: int
    bytes_per_param: int = 2  # bf16 weights
    name: str = "roofline"
    unit: str = "ms"

    def __post_init__(self) -> None:
        if self.device not in ROOFLINE_DEVICES:
            raise InvalidInput(f"no roofline numbers for '{self.device}' (known: {', '.join(ROOFLINE_DEVICES)})")

    def costs(self, spec: MoELayerSpec, ks: list[int]) -> dict[int, float]:
        peak = ROOFLINE_DEVICES[self.device]
        expert_params = 3 * spec.hidden * spec.intermediate
        result = {}
        for k in ks:
            # Expected number of distinct experts hit when each token picks k of E at random.
            touched = spec.num_experts * (1 - (1 - k / spec.num_experts) ** self.tokens)
            weight_bytes = (touched * expert_params + spec.num_experts * spec.hidden) * self.bytes_per_param
            flops = 2 * self.tokens * (k * expert_params + spec.num_experts * spec.hidden)
            seconds = max(flops / peak["flops_per_s"], weight_bytes / peak["bytes_per_s"])
            result[k] = seconds * 1e3
        return result

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "device": self.device, "tokens": self.tokens,
                "bytes_per_param": self.bytes_per_param, **ROOFLINE_DEVICES[self.device]}


@dataclass
class MeasuredLatency:
    """Median time of the op per k, on random weights of the layer's shape (cached per shape)."""

    tokens: int
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    repeats: int = 5
    name: str = "measured"
    unit: str = "ms"
    _cache: dict = field(default_factory=dict, repr=False)

    def costs(self, spec: MoELayerSpec, ks: list[int]) -> dict[int, float]:
        key = (spec.num_experts, spec.hidden, spec.intermediate, spec.attributes, tuple(ks))
        if key not in self._cache:
            self._cache[key] = self._measure(spec, ks)
        return self._cache[key]

    def _measure(self, spec: MoELayerSpec, ks: list[int]) -> dict[int, float]:
        generator = torch.Generator().manual_seed(0)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator).to(self.device, self.dtype)

        hidden = randn(self.tokens, spec.hidden)
        logits = randn(self.tokens, spec.num_experts)
        w_gate_up = randn(spec.num_experts, 2 * spec.intermediate, spec.hidden) * spec.hidden ** -0.5
        w_down = randn(spec.num_experts, spec.hidden, spec.intermediate) * spec.intermediate ** -0.5
        result = {}
        for k in ks:
            attrs = spec.attributes.with_top_k(k)
            times = []
            for _ in range(self.repeats + 1):  # the first call warms up
                self._sync()
                start = time.perf_counter()
                call_grouped_moe(hidden, logits, w_gate_up, w_down, attrs)
                self._sync()
                times.append(time.perf_counter() - start)
            result[k] = statistics.median(times[1:]) * 1e3
        return result

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def describe(self) -> dict:
        return {"name": self.name, "unit": self.unit, "device": self.device, "tokens": self.tokens,
                "dtype": str(self.dtype).removeprefix("torch."), "repeats": self.repeats}
