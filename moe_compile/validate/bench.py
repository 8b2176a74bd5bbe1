"""`moe-compile bench`: one workload through every backend, at the base top-k and under a plan.

For each backend x top-k setting x (batch, prompt) workload: prefill tokens/s and time to first
token (one forward over the prompt), decode tokens/s and the p50/p99 latency of one decode step,
peak memory, and for PyTorch backends the MoE layers' share of the forward time (plus, on a GPU
with known peak numbers, how close the MoE layers run to their roofline). Timing loops are
validate/timing.py's, shared with every script under benchmarks/.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from moe_compile import process_memory
from moe_compile.dtypes import torch_dtype

from .backends import Backend, BenchModel, TopKSetting
from .generation import decoder_feed, greedy_generate
from .memory import PeakMemory, return_freed_memory
from .timing import DecodeTiming, PrefillTiming, Spread, time_decode, time_prefill


@dataclass(frozen=True)
class Workload:
    batch: int
    prompt: int
    new_tokens: int


def _spread_json(spread: Spread, digits: int = 3) -> dict:
    return {key: round(value, digits) if isinstance(value, float) else value for key, value in vars(spread).items()}


@contextlib.contextmanager
def _moe_timer(runner, module_paths: list[str]) -> Iterator[list[float]]:
    """Wall time spent inside the MoE blocks (forward hooks on each block) while the body runs."""
    modules = runner.wrapper.model.get_submodule
    cuda = runner.device.type == "cuda"
    spent: list[float] = []
    starts: dict[int, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def before(module, args) -> None:
        sync()
        starts[id(module)] = time.perf_counter()

    def after(module, args, output) -> None:
        sync()
        spent.append(time.perf_counter() - starts.pop(id(module)))

    handles = [h for path in module_paths for h in (modules(path).register_forward_pre_hook(before),
                                                     modules(path).register_forward_hook(after))]
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def moe_time_share(runner, feed: dict, module_paths: list[str], repeats: int = 3) -> tuple[float, float]:
    """(share of the forward time spent in MoE blocks, MoE seconds per forward) for one feed."""
    runner.infer(feed)
    with _moe_timer(runner, module_paths) as spent:
        start = time.perf_counter()
        for _ in range(repeats):
            runner.infer(feed)
        total = time.perf_counter() - start
    return sum(spent) / total, sum(spent) / repeats


def roofline_seconds(model: BenchModel, setting: TopKSetting, tokens: int, device: str) -> float:
    """The MoE layers' roofline time for `tokens` tokens on `device` (h100 | h200)."""
    from moe_compile.compiler.lexi.cost import RooflineLatency

    cost = RooflineLatency(device, tokens, bytes_per_param=torch.finfo(torch_dtype(model.dtype)).bits // 8)
    return sum(cost.costs(spec, [setting.top_k[spec.index]])[setting.top_k[spec.index]]
               for spec in model.ir.layers) / 1e3


def roofline_device() -> str | None:
    """'h100' or 'h200' when torch sees one (the devices with peak numbers in lexi/cost.py)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    return next((key for key in ("h100", "h200") if key in name), None)


def _row(backend: Backend, setting: TopKSetting, workload: Workload, prefill: PrefillTiming,
         decode: DecodeTiming, memory: PeakMemory) -> dict:
    return {
        "backend": backend.name, "device": backend.device, "setting": setting.name, "sum_k": setting.sum_k,
        "batch": workload.batch, "prompt": workload.prompt, "new_tokens": workload.new_tokens,
        "prefill_tokens_per_s": _spread_json(prefill.tokens_per_s, 1),
        "ttft_ms": _spread_json(prefill.seconds.scaled(1e3)),
        "decode_tokens_per_s": _spread_json(decode.tokens_per_s, 1),
        "step_ms": {"p50": round(decode.step_percentile(50) * 1e3, 3),
                    "p99": round(decode.step_percentile(99) * 1e3, 3)},
        "peak_host_mb": None if memory.host_bytes is None else round(memory.host_bytes / 2**20, 1),
        "peak_host_anon_mb": None if memory.host_anon_bytes is None else round(memory.host_anon_bytes / 2**20, 1),
        "peak_device_mb": None if memory.device_bytes is None else round(memory.device_bytes / 2**20, 1),
    }


def _moe_fields(runner, model: BenchModel, setting: TopKSetting, workload: Workload) -> dict:
    """MoE share of prefill and of one decode step (PyTorch backends); roofline fraction on a GPU."""
    if not hasattr(runner, "wrapper"):
        return {"moe_share": None, "moe_roofline_fraction": None}
    paths = [spec.module_path for spec in model.ir.layers]
    prompt = np.zeros((workload.batch, workload.prompt), dtype=np.int64)
    share_prefill, _ = moe_time_share(runner, decoder_feed(prompt, _named_past(model.empty_past(workload.batch)), 0),
                                      paths)
    step = np.zeros((workload.batch, 1), dtype=np.int64)
    cached = model.empty_past(workload.batch, workload.prompt)
    share_decode, decode_moe_s = moe_time_share(runner, decoder_feed(step, _named_past(cached), workload.prompt), paths)
    device = roofline_device() if runner.device.type == "cuda" else None
    fraction = (round(roofline_seconds(model, setting, workload.batch, device) / decode_moe_s, 4)
                if device else None)
    return {"moe_share": {"prefill": round(share_prefill, 4), "decode": round(share_decode, 4)},
            "moe_roofline_fraction": fraction}


def _named_past(past: list[np.ndarray]) -> dict[str, np.ndarray]:
    from moe_compile.export.decoder import past_names

    return dict(zip(past_names(len(past) // 2), past))


def measure(backend: Backend, setting: TopKSetting, model: BenchModel, workloads: list[Workload],
            repeats: int, seed: int = 0, progress=None, round_number: int = 0) -> list[dict]:
    """Build the backend once for `setting`, then time every workload; rows in workload order,
    each marked with `round_number` (`in_rounds`)."""
    rows = []
    generator = np.random.default_rng(seed)
    vocab = model.ir.config.vocab_size
    if backend.runs_onnx:
        model.onnx_for(setting)  # an export is not the backend's memory or time
    with PeakMemory(cuda=backend.device == "cuda") as memory:
        runner = backend.build(model, setting)
        for workload in workloads:
            past = model.empty_past(workload.batch)
            prompt = generator.integers(0, vocab, (workload.batch, workload.prompt))
            greedy_generate(runner, prompt, workload.new_tokens, past)  # untimed: what the memory peak sees
            memory.update()
            # the samplers' wake-ups would cost the timed runs ~10 % (validate/memory.py)
            with memory.paused(), process_memory.sampling_paused():
                prefill = time_prefill(runner, prompt, past, repeats=repeats)
                decode = time_decode(runner, prompt, past, steps=workload.new_tokens, repeats=repeats)
            rows.append({**_row(backend, setting, workload, prefill, decode, memory),
                         **_moe_fields(runner, model, setting, workload), "round": round_number})
            if progress is not None:
                progress()
    del runner
    return_freed_memory()  # before the next backend is built
    return rows


def in_rounds(runs: list, rounds: int) -> Iterator[tuple[int, object]]:
    """(round, run): every run once per round, the order reversed every other round.

    A shared machine's speed moves between minutes (on the 2-core VM the benches were run on,
    eager PyTorch's decode moved from 102 to 77.5 tokens/s between two runs 47 minutes apart while
    ONNX Runtime's moved 4 %), so a speed-up is only as good as the pairing of the two timings in
    time: rounds give each backend the same minutes, and `pooled_rounds` takes each round's own
    ratio before it takes a median."""
    for number in range(rounds):
        for run in runs if number % 2 == 0 else runs[::-1]:
            yield number, run


def add_speedups(rows: list[dict]) -> None:
    """Each row's ratio to the transformers baseline and, for plan rows, to the same backend at
    the base top-k (prefill and decode tokens/s medians), both timed in the same round."""
    def key(row: dict) -> tuple:
        return row.get("round", 0), row["batch"], row["prompt"]

    def ratios(row: dict, other: dict | None) -> dict | None:
        if other is None:
            return None
        return {phase: round(row[f"{phase}_tokens_per_s"]["median"] / other[f"{phase}_tokens_per_s"]["median"], 3)
                for phase in ("prefill", "decode")}

    baseline = {key(r): r for r in rows if r["backend"] == "transformers"}
    base = {(r["backend"], *key(r)): r for r in rows if r["setting"] == "base"}
    for row in rows:
        row["vs_transformers"] = ratios(row, baseline.get(key(row)))
        row["vs_base_top_k"] = ratios(row, base.get((row["backend"], *key(row)))) if row["setting"] != "base" else None


def pooled_rounds(rows: list[dict]) -> list[dict]:
    """One row per backend x setting x workload from rows timed in rounds (`add_speedups` applied):
    each rate and time the median of the rounds' medians, its min and max over every run; peak
    memory the largest; each speed-up the median of the rounds' own ratios, with their range
    (`vs_transformers_range`, `vs_base_top_k_range`: [min, max]) and `rounds` the count."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault((row["backend"], row["setting"], row["batch"], row["prompt"]), []).append(row)
    return [_pooled(group) for group in cells.values()]


def _pooled(group: list[dict]) -> dict:
    def spread(name: str) -> dict:
        spreads = [row[name] for row in group]
        return {"median": round(statistics.median(s["median"] for s in spreads), 3),
                "min": min(s["min"] for s in spreads), "max": max(s["max"] for s in spreads),
                "runs": sum(s["runs"] for s in spreads)}

    def largest(name: str) -> float | None:
        values = [row[name] for row in group if row[name] is not None]
        return max(values) if values else None

    pooled = {key: value for key, value in group[0].items() if key != "round"}
    pooled.update({name: spread(name) for name in ("prefill_tokens_per_s", "ttft_ms", "decode_tokens_per_s")})
    pooled["step_ms"] = {q: round(statistics.median(row["step_ms"][q] for row in group), 3) for q in ("p50", "p99")}
    pooled.update({name: largest(name) for name in ("peak_host_mb", "peak_host_anon_mb", "peak_device_mb")})
    for name in ("vs_transformers", "vs_base_top_k"):
        each = [row[name] for row in group if row.get(name)]
        pooled[name] = ({phase: round(statistics.median(r[phase] for r in each), 3) for phase in ("prefill", "decode")}
                        if each else None)
        pooled[f"{name}_range"] = ({phase: [min(r[phase] for r in each), max(r[phase] for r in each)]
                                    for phase in ("prefill", "decode")} if each else None)
    pooled["rounds"] = len(group)
    return pooled


def machine_description(threads: int) -> dict:
    import onnxruntime

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def cpu_model() -> str:
    """The processor's model name where Linux says it (a shared VM's host can change between
    runs, and its speed with it), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
