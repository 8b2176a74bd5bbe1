"""Grouped-MoE kernel speed on one GPU against its peers, with the device's own peaks (issues #6, #20).

Layer shapes of five real MoE models, bf16, token counts from decode (1) to prefill (8192).
Every implementation runs the whole MoE op (routing included) on the same seeded inputs; each
peer's output is first checked against the PyTorch reference, and a peer that disagrees or
fails is reported under "peers_failed" instead of being timed. Timing replays a CUDA graph
(`moe_compile.plugins.grouped_moe.timing`); peers that synchronise with the host (the
reference loop, liger-kernel's .item()) cannot be captured and are timed eagerly, which each
row's "timing" records. Two copies of the weights alternate so decode reads come from HBM,
not L2 (one copy where a copy is larger than 8 GiB: DeepSeek-V3's). In the same run: copy bandwidth (a 2 GiB device copy, read + write bytes) and the
dense bf16 GEMM rate (8192^3 matmul), against which

    hbm_fraction   = (distinct chosen experts' weight bytes + activations) / time / copy rate
    flops_fraction = 2 * T * k * 3 * H * I / time / GEMM rate

Item 5 (LExI): the Qwen1.5-MoE layer at a per-layer plan with sum k = 75% of base against the
base top-k on every layer. Writes benchmarks/results/kernel-<device>.json (again after every
row, so a run cut short keeps what it measured) and .png (where matplotlib is installed; else
`benchmarks/gpu_evidence.py --render` draws it from the JSON).

    python benchmarks/kernel_moe.py                    # on an H100 / H200 (peers: pip install '.[bench]')
    python benchmarks/kernel_moe.py --shapes mixtral-8x7b --merge   # one shape at a time, merged
    python benchmarks/kernel_moe.py --dry-run --tokens 1 9 --out X  # CPU, Triton's interpreter: the same
                                                       # measurement at each shape's E and k, H=32, I=16
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_compile.atomic import atomic_path, write_text_atomic
from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference
from moe_compile.versions import package_versions

SHAPES = {  # name: (E, H, I, k)
    "qwen1.5-moe-a2.7b": (60, 2048, 1408, 4),
    "olmoe-1b-7b": (64, 2048, 1024, 8),
    "mixtral-8x7b": (8, 4096, 14336, 2),
    "qwen3-30b-a3b": (128, 2048, 768, 8),
    "deepseek-v3": (256, 7168, 2048, 8),  # its routed experts (softmax top-k here: the kernel's speed)
}
DRY_RUN_HIDDEN, DRY_RUN_INTER = 32, 16
TOKENS = (1, 8, 64, 512, 4096, 8192)
WEIGHT_COPIES = 2
ONE_COPY_BYTES = 8 * 2 ** 30  # weights larger than this are one copy (far larger than any L2 anyway)
# Item 5: Qwen1.5-MoE has 24 MoE layers at k=4; a plan at 75% of sum k (72 of 96). Without
# --plan, a plan of LExI's shape: a third of the layers keep k=4, a third get 3, a third 2.
LEXI_SHAPE, LEXI_LAYERS = "qwen1.5-moe-a2.7b", 24
LEXI_DEFAULT_K = [4] * 8 + [3] * 8 + [2] * 8
LEXI_TOKENS = (1, 8, 64, 4096)
PEER_TOLERANCE = 5e-2  # of the reference output's largest magnitude (bf16)
RESULTS = Path(__file__).parent / "results"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def route_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax top-k routing in plain torch, as the peers that take routing as input need it."""
    weights, experts = torch.topk(logits.float().softmax(dim=-1), k, dim=-1)
    return weights, experts


def grouped_mm_moe(hidden, logits, w_gate_up, w_down, k):
    """MoE with torch.nn.functional.grouped_mm: sort slots by expert, two grouped GEMMs, scatter back.
    No host synchronisation (counts by scatter_add, not bincount), so it is CUDA-graph capturable."""
    tokens, experts = logits.shape
    weights, chosen = route_topk(logits, k)
    flat = chosen.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(experts, dtype=torch.int32, device=hidden.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    rows = order // k
    gate, up = F.grouped_mm(hidden[rows], w_gate_up.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
    y = F.grouped_mm(F.silu(gate) * up, w_down.transpose(-2, -1), offs=offs)
    y = y.float() * weights.flatten()[order, None]
    return torch.zeros(tokens, hidden.shape[1], device=hidden.device).index_add_(0, rows, y).to(hidden.dtype)


def liger_moe(hidden, logits, w_gate_up, w_down, k):
    from liger_kernel.ops.fused_moe import LigerFusedMoEFunction

    weights, chosen = route_topk(logits, k)
    return LigerFusedMoEFunction.apply(hidden, w_gate_up, w_down, chosen.to(torch.int32), weights.to(hidden.dtype))


def moe_ops_moe(hidden, logits, w_gate_up, w_down, k):
    import moe_ops

    weights, chosen = route_topk(logits, k)
    permuted, row_id_map, offsets = moe_ops.permute(hidden, chosen.to(torch.int32), 0, logits.shape[1])
    gate, up = moe_ops.grouped_gemm(permuted, w_gate_up, offsets, trans_b=True).chunk(2, dim=-1)
    y = moe_ops.grouped_gemm((F.silu(gate) * up).contiguous(), w_down, offsets, trans_b=True)
    return moe_ops.unpermute(y, row_id_map, weights, hidden.shape[0], k)


def flashinfer_moe(hidden, logits, w_gate_up, w_down, k):
    """FlashInfer's segment GEMM (SM90 backend where it has one); its JIT needs nvcc on the device."""
    import flashinfer

    weights, chosen = route_topk(logits, k)
    flat = chosen.flatten()
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(logits.shape[1], dtype=torch.int64, device=hidden.device).scatter_add_(
        0, flat, torch.ones_like(flat))
    indptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.int8, device=hidden.device)
    gemm = flashinfer.gemm.SegmentGEMMWrapper(workspace)
    rows = order // k
    segments = {"batch_size": logits.shape[1], "weight_column_major": True, "seg_indptr": indptr}
    gate, up = gemm.run(hidden[rows], w_gate_up, **segments).chunk(2, dim=-1)
    y = gemm.run((F.silu(gate) * up).contiguous(), w_down, **segments).float() * weights.flatten()[order, None]
    return torch.zeros(hidden.shape, device=hidden.device).index_add_(0, rows, y).to(hidden.dtype)


def reference_moe(hidden, logits, w_gate_up, w_down, k):
    return grouped_moe_reference(hidden, logits, w_gate_up, w_down, GroupedMoEAttributes(top_k=k))


# name: (implementation, CUDA-graph capturable, module it needs or None)
PEERS: dict[str, tuple[Callable, bool, str | None]] = {
    "pytorch_reference": (reference_moe, False, None),
    "torch_grouped_mm": (grouped_mm_moe, True, None),
    "liger_kernel_fused_moe": (liger_moe, False, "liger_kernel"),
    "moe_ops_grouped_gemm": (moe_ops_moe, True, "moe_ops"),
    "flashinfer_segment_gemm": (flashinfer_moe, True, "flashinfer"),
}


def installed_peers(peers: list[str], failed: dict) -> list[str]:
    """The peers whose module is importable; the others go to `failed` once, with what to install."""
    import importlib.util

    usable = []
    for peer in peers:
        module = PEERS[peer][2]
        if module is None or importlib.util.find_spec(module) is not None:
            usable.append(peer)
        else:
            failed[peer] = {"all": f"{module} is not installed (pip install '.[bench]'; flashinfer-python: "
                                   "FlashInfer)"}
    return usable


def ours(hidden, logits, w_gate_up, w_down, k):
    from moe_compile.plugins.grouped_moe.launcher import grouped_moe_triton

    return grouped_moe_triton(hidden, logits, w_gate_up, w_down, GroupedMoEAttributes(top_k=k))


def layer_bytes_and_flops(E, H, I, k, tokens, experts_used, itemsize=2):
    weight_bytes = experts_used * 3 * H * I * itemsize
    activation_bytes = 2 * tokens * H * itemsize + tokens * E * 4
    return weight_bytes + activation_bytes, 2 * tokens * k * 3 * H * I


def row(name, E, H, I, k, tokens, experts_used, ours_us, peers_us, peak) -> dict:
    bytes_moved, flops = layer_bytes_and_flops(E, H, I, k, tokens, experts_used)
    timed = ours_us is not None and peak is not None
    return {"shape": name, "E": E, "H": H, "I": I, "k": k, "tokens": tokens, "experts_used": experts_used,
            "ours_us": ours_us, "peers_us": peers_us,
            "hbm_fraction": bytes_moved / (ours_us * 1e-6) / (peak["copy_tb_s"] * 1e12) if timed else None,
            "flops_fraction": flops / (ours_us * 1e-6) / (peak["bf16_tflops"] * 1e12) if timed else None}


def weight_copies(E, H, I, itemsize=2) -> int:
    return 1 if 3 * E * H * I * itemsize > ONE_COPY_BYTES else WEIGHT_COPIES


class Layer:
    """Seeded inputs of one layer shape: its weight copies, taken in turn per call (or those of
    `weights`, shared with another token count's Layer), and the activations of one token count."""

    def __init__(self, E, H, I, tokens, device, dtype=torch.bfloat16, seed=0, weights=None):
        g = torch.Generator(device=device).manual_seed(seed)
        self.hidden = torch.randn(tokens, H, generator=g, device=device, dtype=dtype)  # [T, H]
        self.logits = torch.randn(tokens, E, generator=g, device=device)  # [T, E]
        self.weights = weights or [
            (torch.randn(E, 2 * I, H, generator=g, device=device, dtype=dtype).mul_(H ** -0.5),  # [E, 2I, H]
             torch.randn(E, H, I, generator=g, device=device, dtype=dtype).mul_(I ** -0.5))  # [E, H, I]
            for _ in range(weight_copies(E, H, I, torch.finfo(dtype).bits // 8))]
        self.turn = itertools.cycle(range(len(self.weights)))

    def call(self, impl, k, copy: int | None = None):
        """impl on weight copy `copy`, or on the next copy in turn."""
        w_gate_up, w_down = self.weights[next(self.turn) if copy is None else copy]
        return impl(self.hidden, self.logits, w_gate_up, w_down, k)

    def experts_used(self, k) -> int:
        return int(route_topk(self.logits, k)[1].unique().numel())


def measure_peak(timer: "Timer", copy_elements: int = 2 ** 30, n: int = 8192) -> dict:
    """Copy bandwidth (read + write bytes of a bf16 copy) and the dense bf16 GEMM rate (n^3)."""
    src = torch.empty(copy_elements, dtype=torch.bfloat16, device=timer.device).normal_()
    dst = torch.empty_like(src)
    copy_us = timer.graph(lambda: dst.copy_(src))
    a, b = (torch.randn(n, n, device=timer.device, dtype=torch.bfloat16) for _ in range(2))
    gemm_us = timer.graph(lambda: a @ b)
    return {"copy_tb_s": 2 * src.numel() * 2 / (copy_us * 1e-6) / 1e12,
            "bf16_tflops": 2 * n ** 3 / (gemm_us * 1e-6) / 1e12,
            "copy_bytes": 2 * src.numel() * 2, "gemm_n": n}


@dataclass(frozen=True)
class Timer:
    """Where the layers live and how calls are timed: `graph` for capturable callables, `eager` else."""

    device: str
    graph: Callable
    eager: Callable
    graph_label: str = "cuda_graph"  # how each is reported in a row's "timing"
    eager_label: str = "eager"


def gpu_timer() -> Timer:
    from moe_compile.plugins.grouped_moe.timing import cuda_graph_us, eager_us

    return Timer("cuda", cuda_graph_us, eager_us)


def cpu_timer() -> Timer:
    """The dry run's: host wall clock for everything (nothing is captured on CPU)."""
    from moe_compile.plugins.grouped_moe.timing import wall_us

    return Timer("cpu", wall_us, wall_us, "host_wall_clock", "host_wall_clock")


def check_and_time(layer: Layer, impl, k, capturable, want, timer: Timer) -> tuple[float, str]:
    """(microseconds per call, how it was timed), after checking the output against the reference's.
    A capturable implementation whose capture fails is timed eagerly instead, and says so."""
    got = layer.call(impl, k, copy=0)
    error = (got.float() - want.float()).abs().max().item()
    if not error <= PEER_TOLERANCE * want.float().abs().max().item():
        raise AssertionError(f"max |diff| {error:.3g} from the reference")
    if capturable:
        try:
            return timer.graph(lambda: layer.call(impl, k)), timer.graph_label
        except RuntimeError as exc:
            if timer.device == "cuda":
                torch.cuda.synchronize()
            mode = f"{timer.eager_label} (CUDA-graph capture failed: {' '.join(str(exc).split())[:120]})"
    else:
        mode = timer.eager_label
    return timer.eager(lambda: layer.call(impl, k)), mode


def benchmark_shape(name, tokens, peers, peak, failed, progress, timer: Timer, dims=None,
                    dtype=torch.bfloat16) -> list[dict]:
    """Every token count of one shape; `dims` (H, I) overrides the shape's (the dry run's small ones)."""
    E, H, I, k = SHAPES[name]
    H, I = dims or (H, I)
    rows = []
    weights = None
    for t in tokens:
        layer = Layer(E, H, I, t, timer.device, dtype, weights=weights)
        weights = layer.weights
        want = layer.call(reference_moe, k, copy=0)
        ours_us, timing = check_and_time(layer, ours, k, True, want, timer)
        peers_us, peer_timing = {}, {"ours": timing}
        for peer in peers:
            impl, capturable, _ = PEERS[peer]
            try:
                peers_us[peer], peer_timing[peer] = check_and_time(layer, impl, k, capturable, want, timer)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                failed.setdefault(peer, {})[f"{name}/T={t}"] = why
        rows.append(row(name, E, H, I, k, t, layer.experts_used(k), ours_us, peers_us, peak) | {"timing": peer_timing})
        del layer, want
        progress(rows[-1])
    return rows


def lexi_payoff(plan_k: list[int], timer: Timer, shape: str = LEXI_SHAPE, tokens=LEXI_TOKENS, dims=None,
                dtype=torch.bfloat16) -> dict:
    """Sum over the layers of one MoE op at each layer's k, plan vs base, per token count."""
    E, H, I, base = SHAPES[shape]
    H, I = dims or (H, I)
    result = {}
    weights = None
    for t in tokens:
        layer = Layer(E, H, I, t, timer.device, dtype, weights=weights)
        weights = layer.weights
        per_k = {k: timer.graph(lambda k=k, layer=layer: layer.call(ours, k)) for k in sorted(set(plan_k) | {base})}
        base_us, plan_us = len(plan_k) * per_k[base], sum(per_k[k] for k in plan_k)
        result[str(t)] = {"base_us": base_us, "plan_us": plan_us, "speedup": base_us / plan_us,
                          "per_k_us": {str(k): v for k, v in per_k.items()}}
    return result


def plot(report: dict, path: Path) -> None:
    """The PNG of a report (which may have been measured elsewhere: plots need no GPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = [name for name in SHAPES if any(r["shape"] == name for r in report["rows"])] or list(SHAPES)
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 4), squeeze=False)
    for ax, name in zip(axes[0], shapes):
        rows = [r for r in report["rows"] if r["shape"] == name]
        names = ["ours"] + sorted({p for r in rows for p in r["peers_us"]})
        for impl in names:
            points = [(r["tokens"], r["ours_us"] if impl == "ours" else r["peers_us"].get(impl)) for r in rows]
            points = [(t, us) for t, us in points if us is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=impl, linewidth=2.5 if impl == "ours" else 1)
        ax.set(xscale="log", yscale="log", title=f"{name} (E={rows[0]['E']}, k={rows[0]['k']})" if rows else name,
               xlabel="tokens", ylabel="us per MoE layer")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"grouped MoE, {report.get('dtype', 'bfloat16')}, {report['rows'][0]['timing']['ours'] if report['rows'] else ''}"
                 f" timing: {report['device']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def summary(rows: list[dict]) -> dict:
    """The issue's targets, computed from the rows (None where nothing was timed)."""
    timed = [r for r in rows if r["ours_us"] is not None]
    ratios = [min(r["peers_us"].values()) / r["ours_us"] for r in timed if r["peers_us"]]
    decode = [r["hbm_fraction"] for r in timed if r["tokens"] <= 64]
    prefill = [r["flops_fraction"] for r in timed if r["tokens"] >= 4096]
    return {"geomean_speedup_vs_best_peer": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
            "min_decode_hbm_fraction": min(decode) if decode else None,
            "min_prefill_flops_fraction": min(prefill) if prefill else None,
            "targets": {"decode_hbm_fraction": 0.8, "prefill_flops_fraction": 0.6, "geomean_speedup": 1.1}}


def versions() -> dict:
    return package_versions("triton", "liger-kernel", "moe-ops", "flashinfer-python")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    parser.add_argument("--peers", nargs="*", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--plan", type=Path,
                        help="plan.json of Qwen1.5-MoE for item 5 (default: a synthetic 75%% plan)")
    parser.add_argument("--no-lexi", action="store_true", help="skip item 5")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: the same measurement on CPU (Triton's interpreter, fp32, H=32, I=16)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for kernel-<device>.json/.png")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of shapes not run now from an existing result file (runs split by shape)")
    return parser.parse_args(argv)


def merged(old: dict, new: dict, shapes: list[str]) -> dict:
    """`new` plus the rows (and peer failures) of the shapes it did not run from `old`; commands listed."""
    kept = [r for r in old["rows"] if r["shape"] not in shapes]
    failed = {peer: {key: why for key, why in cases.items() if key.split("/")[0] not in shapes}
              for peer, cases in old.get("peers_failed", {}).items()}
    for peer, cases in new["peers_failed"].items():
        failed.setdefault(peer, {}).update(cases)
    order = {name: i for i, name in enumerate(SHAPES)}
    rows = sorted(kept + new["rows"], key=lambda r: (order[r["shape"]], r["tokens"]))
    lexi = new["lexi"] if new["lexi"]["tokens"] is not None else old["lexi"]
    commands = old["command"] if isinstance(old["command"], list) else [old["command"]]
    return new | {"rows": rows, "peers_failed": {p: c for p, c in failed.items() if c}, "lexi": lexi,
                  "command": [*commands, new["command"]]}


def plan_top_k(path: Path | None) -> tuple[list[int], str]:
    if path is None:
        return LEXI_DEFAULT_K, "synthetic: 8 layers each at k=4, 3, 2 (sum 72 of 96)"
    return [layer["top_k"] for layer in json.loads(path.read_text())["layers"]], str(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    command = "python benchmarks/kernel_moe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    plan_k, plan_source = plan_top_k(args.plan)
    if args.dry_run:  # fp32: Triton 3.6's interpreter multiplies bf16 dot operands as raw bits
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, timer, dims, dtype, lexi_tokens = "dry-run", cpu_timer(), (DRY_RUN_HIDDEN, DRY_RUN_INTER), \
            torch.float32, tuple(args.tokens)
        peak = measure_peak(timer, copy_elements=2 ** 20, n=256)
    elif not torch.cuda.is_available():
        print("kernel_moe: error: needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        sys.exit(2)
    else:
        device, timer, dims, dtype, lexi_tokens = torch.cuda.get_device_name(), gpu_timer(), None, torch.bfloat16, \
            LEXI_TOKENS
        peak = measure_peak(timer)
    print(f"peak: {peak}", file=sys.stderr)
    stem, failed = f"kernel-{slug(device)}", {}
    old = json.loads((args.out / f"{stem}.json").read_text()) \
        if args.merge and (args.out / f"{stem}.json").is_file() else None
    report = {"device": device, "versions": versions(), "command": command, "peak": peak, "rows": [],
              "peers_failed": failed, "dtype": str(dtype).removeprefix("torch."),
              "lexi": {"shape": LEXI_SHAPE, "plan_top_k": plan_k, "plan_source": plan_source,
                       "sum_k": sum(plan_k), "base_sum_k": LEXI_LAYERS * SHAPES[LEXI_SHAPE][3], "tokens": None}}

    def save() -> dict:
        """The report so far, merged and summarised, written at once."""
        out = merged(old, report, args.shapes) if old is not None else dict(report)
        out["summary"] = summary(out["rows"])
        write_text_atomic(args.out / f"{stem}.json", json.dumps(out, indent=2) + "\n")
        return out

    def progress(measured: dict) -> None:
        report["rows"].append(measured)
        print(json.dumps(measured), file=sys.stderr)
        save()

    for name in args.shapes:
        benchmark_shape(name, args.tokens, installed_peers(args.peers, failed), peak, failed, progress, timer,
                        dims, dtype)
    if not args.no_lexi:
        report["lexi"]["tokens"] = lexi_payoff(plan_k, timer, tokens=lexi_tokens, dims=dims, dtype=dtype)
    final = save()
    try:
        plot(final, args.out / f"{stem}.png")
    except ImportError:
        print("kernel_moe: matplotlib is not installed: no PNG (benchmarks/gpu_evidence.py --render draws it)",
              file=sys.stderr)
    print(json.dumps(final, indent=2))
    return final


if __name__ == "__main__":
    main()
