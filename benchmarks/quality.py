"""Quality study on the trained demo: what each way of cutting MoE work costs in perplexity.

At Σk = 50%, 62.5%, 75% and 87.5% of the base (8 layers x top-4 = 32) it scores, on the
demo's held-out text (`moe-compile eval`'s windows):

    lexi            the LExI plan (data-free profile + exact DP), as `moe-compile plan` makes it
    uniform         the same Σk spread over the layers as evenly as whole numbers allow
    random          RANDOM_PLANS seeded random per-layer top-k with the same Σk
    expert_pruning  NAEE-style: every layer keeps its top-4, but each layer's least used experts
                    (counted on the calibration split of the corpus) are removed, router rows
                    included, until the measured cost is no more than the LExI point's

Measured cost (the x axis): expert weights a decode step must read, relative to the base
model. The held-out windows are decoded DECODE_BATCH at a time (one token of each of
DECODE_BATCH sequences per step); per step and layer we count the distinct experts the
routers pick, and sum over layers. Lowering k and removing experts both lower it; at one
sequence it is Σk exactly, which no amount of pruning changes.

Item 5 (delta_vs_loss): for every layer j and k < base, Δ_j(k) from the profile against the
perplexity increase from lowering only layer j to k, as Spearman rank correlations: within each
layer (over k), across layers at each k, and over all (j, k) pairs.

    python benchmarks/quality.py        # -> benchmarks/results/quality.json, quality.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_corpus import Corpus, load_corpus

from moe_compile.atomic import atomic_path, write_text_atomic
from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.plan import Budget, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import rewrite_model
from moe_compile.jsonio import read_json_object
from moe_compile.validate.perplexity import (
    eval_windows,
    load_tokenizer,
    module_logits,
    perplexity,
    windows,
)

BUDGETS = (0.5, 0.625, 0.75, 0.875)
RANDOM_PLANS = 3
DECODE_BATCH = 8
COST_WINDOWS = 24  # held-out windows the cost is counted on
SEED = 0
RESULTS = ROOT / "benchmarks" / "results"


def uniform_plan(base: list[int], sum_k: int) -> list[int]:
    """`sum_k` spread over the layers as evenly as whole numbers allow, the extra ones evenly spaced."""
    layers = len(base)
    low, extra = divmod(sum_k, layers)
    return [min(b, low + ((i + 1) * extra // layers - i * extra // layers)) for i, b in enumerate(base)]


def random_plan(base: list[int], sum_k: int, rng: np.random.Generator, k_min: int = 1) -> list[int]:
    ks = [k_min] * len(base)
    for _ in range(sum_k - sum(ks)):
        open_layers = [i for i, (k, b) in enumerate(zip(ks, base)) if k < b]
        ks[open_layers[rng.integers(len(open_layers))]] += 1
    return ks


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = values.argsort(kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=float)
        for value in np.unique(values):
            result[values == value] = result[values == value].mean()
        return result

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def prune_block(block: nn.Module, kept: list[int]) -> None:
    """Remove the experts not in `kept` from one Qwen2-MoE block (router rows included)."""
    index = torch.tensor(kept)
    for owner, name in ((block.gate, "weight"), (block.experts, "gate_up_proj"), (block.experts, "down_proj")):
        setattr(owner, name, nn.Parameter(getattr(owner, name).detach()[index], requires_grad=False))
    block.gate.num_experts = block.experts.num_experts = len(kept)
    block.gate.kept_experts = kept


class Study:
    """The demo, its held-out windows, and ways to score it under a per-layer k or a pruning."""

    def __init__(self, corpus: Corpus, model: str, held_out_windows: int | None) -> None:
        self.moe_model = load_moe_model(model)
        self.base = [spec.base_top_k for spec in self.moe_model.layers]
        self.vocab_size = int(self.moe_model.config.vocab_size)
        every = eval_windows(self.moe_model.path)
        count = held_out_windows or every.shape[0]
        self.held_out = every[:: max(1, every.shape[0] // count)][:count]
        self.cost_windows = self.held_out[:COST_WINDOWS]
        tokenizer = load_tokenizer(self.moe_model.path)
        self.calibration = windows(tokenizer.encode(Corpus.joined(corpus.calibration)).ids)
        self.evaluations = 0

    def model(self, ks: list[int], kept: list[list[int]] | None = None) -> nn.Module:
        """The model's own transformers blocks with the router's top-k set per layer: the same
        function as the StaticTopKMoE rewrite (`check_same_as_rewrite`), three times faster on CPU."""
        model = load_causal_lm(self.moe_model)
        for position, (spec, k) in enumerate(zip(self.moe_model.layers, ks)):
            block = model.get_submodule(spec.module_path)
            block.gate.top_k = k
            if kept is not None:
                prune_block(block, kept[position])
        return model

    def check_same_as_rewrite(self, ks: list[int]) -> dict:
        """Perplexity through `rewrite_model` (what `moe-compile eval --plan` runs) and through `model`."""
        top_k = {spec.index: k for spec, k in zip(self.moe_model.layers, ks)}
        sample = self.held_out[:8]
        rewritten = rewrite_model(load_causal_lm(self.moe_model), self.moe_model, top_k)
        return {"top_k": ks,
                "rewritten": perplexity(module_logits(rewritten), sample, self.vocab_size).perplexity,
                "router_top_k": perplexity(module_logits(self.model(ks)), sample, self.vocab_size).perplexity}

    def perplexity(self, ks: list[int], kept: list[list[int]] | None = None) -> float:
        self.evaluations += 1
        value = perplexity(module_logits(self.model(ks, kept)), self.held_out, self.vocab_size).perplexity
        print(f"  eval {self.evaluations}: k {ks}{' (pruned)' if kept else ''} -> {value:.4f}", flush=True)
        return value

    def selections(self, model: nn.Module, token_windows: torch.Tensor) -> dict[int, torch.Tensor]:
        """Per MoE layer, the experts (original numbering) each token is routed to: [N, L, k]."""
        picked: dict[int, list[torch.Tensor]] = {spec.index: [] for spec in self.moe_model.layers}

        def recorder(index: int, length: int):
            def hook(gate: nn.Module, _inputs, output) -> None:
                chosen = output[2].view(-1, length, gate.top_k)  # router indices [B, L, k]
                kept = getattr(gate, "kept_experts", None)
                picked[index].append(chosen if kept is None else torch.tensor(kept)[chosen])
            return hook

        length = token_windows.shape[1]
        handles = [model.get_submodule(spec.module_path).gate.register_forward_hook(recorder(spec.index, length))
                   for spec in self.moe_model.layers]
        with torch.no_grad():
            for start in range(0, token_windows.shape[0], 16):
                model(input_ids=token_windows[start:start + 16])
        for handle in handles:
            handle.remove()
        return {index: torch.cat(chunks) for index, chunks in picked.items()}

    def decode_cost(self, ks: list[int], kept: list[list[int]] | None = None) -> float:
        """Distinct experts read per decode step of DECODE_BATCH sequences, summed over layers."""
        total = 0.0
        for chosen in self.selections(self.model(ks, kept), self.cost_windows).values():
            n, length, k = chosen.shape
            steps = chosen[: n - n % DECODE_BATCH].view(-1, DECODE_BATCH, length, k).permute(0, 2, 1, 3)
            hits = F.one_hot(steps.reshape(*steps.shape[:2], -1), 1 + int(chosen.max())).amax(dim=2)
            total += hits.sum(-1).float().mean().item()
        return total

    def usage(self) -> dict[int, np.ndarray]:
        """How often each expert is chosen on the calibration split, per layer, at the base top-k."""
        chosen = self.selections(self.model(self.base), self.calibration)
        return {index: np.bincount(c.reshape(-1).numpy(), minlength=spec.num_experts)
                for (index, c), spec in zip(chosen.items(), self.moe_model.layers)}


def pruning_order(usage: dict[int, np.ndarray], base: list[int]) -> list[tuple[int, int]]:
    """(layer, expert) pairs, least used first, never taking a layer below its top-k experts."""
    candidates = sorted((count, layer, expert) for layer, counts in usage.items() for expert, count in enumerate(counts))
    room = {layer: len(counts) - base[i] for i, (layer, counts) in enumerate(usage.items())}
    order = []
    for _count, layer, expert in candidates:
        if room[layer] > 0:
            room[layer] -= 1
            order.append((layer, expert))
    return order


def kept_after(order: list[tuple[int, int]], drops: int, usage: dict[int, np.ndarray]) -> list[list[int]]:
    dropped = set(order[:drops])
    return [[e for e in range(len(counts)) if (layer, e) not in dropped] for layer, counts in usage.items()]


def match_pruning(study: Study, order, usage, target: float, cache: dict[int, float]) -> int:
    """The fewest least-used experts to remove so that the measured cost is <= `target` (bisection)."""
    def cost(drops: int) -> float:
        if drops not in cache:
            cache[drops] = study.decode_cost(study.base, kept_after(order, drops, usage))
        return cache[drops]

    low, high = 0, len(order)
    while low < high:
        middle = (low + high) // 2
        if cost(middle) <= target:
            high = middle
        else:
            low = middle + 1
    cost(low)
    return low


def delta_vs_loss(study: Study, profile, base_ppl: float) -> dict:
    rows = []
    for j, (spec, layer) in enumerate(zip(study.moe_model.layers, profile.layers)):
        for k in range(1, spec.base_top_k):
            ks = list(study.base)
            ks[j] = k
            rows.append({"layer": spec.index, "k": k, "delta": layer.delta[k],
                         "perplexity_increase": study.perplexity(ks) - base_ppl})
    def corr(subset):
        return spearman([r["delta"] for r in subset], [r["perplexity_increase"] for r in subset])

    return {
        "rows": rows,
        "spearman_all_pairs": corr(rows),
        "spearman_within_layer": {str(spec.index): corr([r for r in rows if r["layer"] == spec.index])
                                  for spec in study.moe_model.layers},
        "spearman_across_layers_at_k": {str(k): corr([r for r in rows if r["k"] == k])
                                        for k in range(1, max(study.base))},
    }


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    points = doc["points"]
    for method, style in (("lexi", "o-"), ("uniform", "s-"), ("expert_pruning", "^-")):
        left.plot([p["cost"][method] for p in points], [p[method] for p in points], style, label=method)
    left.scatter([c for p in points for c in p["cost"]["random"]], [v for p in points for v in p["random"]],
                 marker="x", color="gray", label="random plans")
    left.scatter([1.0], [doc["base"]["perplexity"]], marker="*", s=150, color="black", label="base (top-4)")
    left.set_xlabel(f"measured MoE cost (expert reads per decode step of {DECODE_BATCH} sequences, 1 = base)")
    left.set_ylabel("held-out perplexity")
    left.set_yscale("log")
    left.set_title("demo: perplexity against MoE cost")
    left.legend()
    rows = doc["delta_vs_loss"]["rows"]
    for k in sorted({r["k"] for r in rows}):
        subset = [r for r in rows if r["k"] == k]
        right.scatter([r["delta"] for r in subset], [max(r["perplexity_increase"], 1e-3) for r in subset],
                      label=f"k={k}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("LExI profile Δ_j(k) (data-free)")
    right.set_ylabel("perplexity increase, only layer j at k")
    right.set_title(f"Δ vs real loss: Spearman {doc['delta_vs_loss']['spearman_all_pairs']:.2f} over all (j, k)")
    right.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="a folder written by train_demo.py (default: the demo)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moe-compile" / "corpus")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=None,
                        help="score only this many evenly spaced held-out windows (default: all of them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    study = Study(load_corpus(args.cache), args.model, args.windows)
    base_sum = sum(study.base)
    profile = profile_model(study.moe_model, ProfileOptions(), show_progress=False)
    base_ppl = study.perplexity(study.base)
    base_cost = study.decode_cost(study.base)
    usage = study.usage()
    order = pruning_order(usage, study.base)
    pruning_costs: dict[int, float] = {}
    rng = np.random.default_rng(SEED)
    points = []
    for budget in BUDGETS:
        plan = make_plan(study.moe_model, profile, Budget(fraction=budget), ActiveExperts())
        lexi = [layer["top_k"] for layer in plan["layers"]]
        sum_k = sum(lexi)
        uniform = uniform_plan(study.base, sum_k)
        randoms = [random_plan(study.base, sum_k, rng) for _ in range(RANDOM_PLANS)]
        lexi_cost = study.decode_cost(lexi)
        drops = match_pruning(study, order, usage, lexi_cost, pruning_costs)
        kept = kept_after(order, drops, usage)
        point = {
            "budget": budget, "sum_k": sum_k, "base_sum_k": base_sum,
            "lexi": study.perplexity(lexi), "uniform": study.perplexity(uniform),
            "expert_pruning": study.perplexity(study.base, kept),
            "random": [study.perplexity(ks) for ks in randoms],
            "cost": {"lexi": lexi_cost / base_cost, "uniform": study.decode_cost(uniform) / base_cost,
                     "expert_pruning": pruning_costs[drops] / base_cost,
                     "random": [study.decode_cost(ks) / base_cost for ks in randoms]},
            "plans": {"lexi": lexi, "uniform": uniform, "random": randoms,
                      "expert_pruning_experts_kept": [len(k) for k in kept]},
        }
        print(json.dumps({key: point[key] for key in ("budget", "sum_k", "lexi", "uniform", "expert_pruning",
                                                       "random")}), flush=True)
        points.append(point)
    doc = {
        "model": {"name": args.model, "sha256": study.moe_model.fingerprint["sha256"],
                  "recorded_perplexity": read_json_object(study.moe_model.path / "training.json",
                                                          "training record")["held_out"]["perplexity"]},
        "held_out": {"windows": int(study.held_out.shape[0]), "window": int(study.held_out.shape[1]),
                     "calibration_windows": int(study.calibration.shape[0])},
        "cost": f"distinct experts read per decode step of {DECODE_BATCH} sequences, summed over MoE layers, "
                f"counted on {COST_WINDOWS} held-out windows, relative to the base model",
        "base": {"perplexity": base_ppl, "sum_k": base_sum, "cost": 1.0, "expert_reads_per_step": base_cost},
        "profile": {"options": profile.to_json()["options"],
                    "sensitivity": [{str(k): d for k, d in layer.delta.items()} for layer in profile.layers]},
        "calibration_usage": {str(layer): counts.tolist() for layer, counts in usage.items()},
        "points": points,
        "delta_vs_loss": delta_vs_loss(study, profile, base_ppl),
        "check_same_as_rewrite": study.check_same_as_rewrite(points[1]["plans"]["lexi"]),
        "evaluations": study.evaluations,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "wall_seconds": round(time.time() - started, 1),
    }
    write_text_atomic(args.results / "quality.json", json.dumps(doc, indent=1) + "\n")
    plot(doc, args.results / "quality.png")
    print(json.dumps({"base": doc["base"], "spearman_all_pairs": doc["delta_vs_loss"]["spearman_all_pairs"],
                      "wall_seconds": doc["wall_seconds"]}))


if __name__ == "__main__":
    main()
