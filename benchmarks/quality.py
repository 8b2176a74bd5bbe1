"""Quality study on the trained demo: what each way of cutting MoE work costs in perplexity.

At Σk = 50%, 62.5%, 75% and 87.5% of the base Σk it scores, on the model's held-out text
(`moe-compile eval`'s windows) and on UNSEEN, a text of another style that no training or
calibration used (onnxruntime's ThirdPartyNotices.txt: license texts):

    <estimator>     for every sensitivity estimator (lexi, model-aware, self-kl, calibration):
                    the exact DP's plan on its profile ("dp") and the plan `moe-compile plan`
                    returns after local search and the guard against uniform ("plan")
    uniform         the same Σk spread over the layers as evenly as whole numbers allow
    random          RANDOM_PLANS seeded random per-layer top-k with the same Σk (best and median)
    expert_pruning  NAEE-style: every layer keeps its top-k, but each layer's least used experts
                    (counted on the calibration split of the corpus) are removed, router rows
                    included, until the measured cost is no more than the uniform point's

Measured cost (the x axis): expert weights a decode step must read, relative to the base
model. The held-out windows are decoded DECODE_BATCH at a time (one token of each of
DECODE_BATCH sequences per step); per step and layer we count the distinct experts the
routers pick, and sum over layers. Lowering k and removing experts both lower it; at one
sequence it is Σk exactly, which no amount of pruning changes.

delta_vs_loss: for every layer j and k < base, each estimator's s_j(k) against the held-out
perplexity increase from lowering only layer j to k, as Spearman rank correlations.
additivity: for every plan scored, the sum of the per-layer perplexity increases against the
plan's real increase.

    python benchmarks/quality.py [--model demo|FOLDER]  # -> benchmarks/results/quality-NAME.json, .png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
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
from moe_compile.compiler.lexi.kl_profile import OutputObjective
from moe_compile.compiler.lexi.options import ESTIMATORS
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.lexi.verify import uniform_plan
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.compiler.rewrite import rewrite_model
from moe_compile.validate.perplexity import (
    eval_windows,
    load_tokenizer,
    module_logits,
    perplexity,
    windows,
)

BUDGETS = (0.5, 0.625, 0.75, 0.875)
RANDOM_PLANS = 8
DECODE_BATCH = 8
COST_WINDOWS = 24  # held-out windows the cost is counted on
SEED = 0
RESULTS = ROOT / "benchmarks" / "results"


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
    """Remove the experts not in `kept` from one MoE block.

    Qwen2-MoE: their router rows and weights go. DeepSeek-V3 routes by groups of experts, which
    removing rows would break, so there a removed expert's score-correction bias becomes -inf: it
    is never chosen, and a group left with fewer than two experts is never chosen either (a group
    is scored by its two best experts)."""
    if hasattr(block.gate, "e_score_correction_bias"):
        removed = torch.ones_like(block.gate.e_score_correction_bias, dtype=torch.bool)
        removed[torch.tensor(kept)] = False
        block.gate.e_score_correction_bias.masked_fill_(removed, float("-inf"))
        return
    index = torch.tensor(kept)
    for owner, name in ((block.gate, "weight"), (block.experts, "gate_up_proj"), (block.experts, "down_proj")):
        setattr(owner, name, nn.Parameter(getattr(owner, name).detach()[index], requires_grad=False))
    block.gate.num_experts = block.experts.num_experts = len(kept)
    block.gate.kept_experts = kept


def routed_top_k_model(moe_model, ks: list[int], kept: list[list[int]] | None = None) -> nn.Module:
    """The model's own transformers blocks with the router's top-k set per layer (and, with `kept`,
    only those experts): the same function as the StaticTopKMoE rewrite (`Study.check_same_as_rewrite`),
    three times faster on CPU."""
    model = load_causal_lm(moe_model)
    for position, (spec, k) in enumerate(zip(moe_model.layers, ks)):
        block = model.get_submodule(spec.module_path)
        block.gate.top_k = k
        if kept is not None:
            prune_block(block, kept[position])
    return model


def routed_perplexity(moe_model, ks: list[int], token_windows: torch.Tensor, kept: list[list[int]] | None = None) -> float:
    """Perplexity on `token_windows` of the model at per-layer top-k `ks` (`routed_top_k_model`)."""
    return perplexity(module_logits(routed_top_k_model(moe_model, ks, kept)), token_windows,
                      int(moe_model.config.vocab_size)).perplexity


class Study:
    """The demo, its held-out windows, and ways to score it under a per-layer k or a pruning."""

    def __init__(self, corpus: Corpus, model: str, held_out_windows: int | None, unseen: Path) -> None:
        self.moe_model = load_moe_model(model)
        self.base = [spec.base_top_k for spec in self.moe_model.layers]
        self.vocab_size = int(self.moe_model.config.vocab_size)

        def spaced(every: torch.Tensor) -> torch.Tensor:
            count = held_out_windows or every.shape[0]
            return every[:: max(1, every.shape[0] // count)][:count]

        self.texts = {"held_out": spaced(eval_windows(self.moe_model.path)),
                      "unseen": spaced(eval_windows(self.moe_model.path, unseen))}
        self.held_out = self.texts["held_out"]
        self.cost_windows = self.held_out[:COST_WINDOWS]
        self.scores: dict = {}
        tokenizer = load_tokenizer(self.moe_model.path)
        self.calibration = windows(tokenizer.encode(Corpus.joined(corpus.calibration)).ids)
        self.evaluations = 0

    def model(self, ks: list[int], kept: list[list[int]] | None = None) -> nn.Module:
        return routed_top_k_model(self.moe_model, ks, kept)

    def check_same_as_rewrite(self, ks: list[int]) -> dict:
        """Perplexity through `rewrite_model` (what `moe-compile eval --plan` runs) and through `model`."""
        top_k = {spec.index: k for spec, k in zip(self.moe_model.layers, ks)}
        sample = self.held_out[:8]
        rewritten = rewrite_model(load_causal_lm(self.moe_model), self.moe_model, top_k)
        return {"top_k": ks,
                "rewritten": perplexity(module_logits(rewritten), sample, self.vocab_size).perplexity,
                "router_top_k": routed_perplexity(self.moe_model, ks, sample)}

    def perplexity(self, ks: list[int], kept: list[list[int]] | None = None, text: str = "held_out") -> float:
        key = (tuple(ks), None if kept is None else tuple(map(tuple, kept)), text)
        if key not in self.scores:
            self.evaluations += 1
            self.scores[key] = routed_perplexity(self.moe_model, ks, self.texts[text], kept)
            print(f"  eval {self.evaluations}: {text} k {ks}{' (pruned)' if kept else ''} -> "
                  f"{self.scores[key]:.4f}", flush=True)
        return self.scores[key]

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


def pruning_order(usage: dict[int, np.ndarray], specs: list) -> list[tuple[int, int]]:
    """(layer, expert) pairs, least used first, never leaving a token fewer than top-k experts.

    Without grouped routing a layer keeps at least its top-k experts. With it (DeepSeek-V3: the
    top `topk_group` of `n_group` groups are chosen first), every group keeps at least
    ceil(top-k / topk_group), so any groups the router picks still hold top-k experts."""
    candidates = sorted((count, layer, expert) for layer, counts in usage.items() for expert, count in enumerate(counts))
    room, group_of = {}, {}
    for spec in specs:
        groups, picked = spec.attributes.n_group, spec.attributes.topk_group
        size = spec.num_experts // groups
        floor = spec.base_top_k if groups == 1 else -(-spec.base_top_k // picked)
        room.update({(spec.index, g): size - floor for g in range(groups)})
        group_of[spec.index] = size
    order = []
    for _count, layer, expert in candidates:
        group = (layer, expert // group_of[layer])
        if room[group] > 0:
            room[group] -= 1
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


def single_layer_losses(study: Study, base_ppl: float) -> list[dict]:
    """Held-out perplexity increase from lowering only layer j to k, for every j and k < base."""
    rows = []
    for j, spec in enumerate(study.moe_model.layers):
        for k in range(1, spec.base_top_k):
            ks = list(study.base)
            ks[j] = k
            rows.append({"layer": spec.index, "position": j, "k": k,
                         "perplexity_increase": study.perplexity(ks) - base_ppl})
    return rows


def delta_vs_loss(rows: list[dict], profile) -> dict:
    """Spearman of an estimator's s_j(k) against the real single-layer loss."""
    deltas = [profile.layers[r["position"]].delta[r["k"]] for r in rows]
    losses = [r["perplexity_increase"] for r in rows]
    ks = sorted({r["k"] for r in rows})
    return {"spearman_all_pairs": spearman(deltas, losses),
            "spearman_across_layers_at_k": {str(k): spearman([d for d, r in zip(deltas, rows) if r["k"] == k],
                                                             [r["perplexity_increase"] for r in rows if r["k"] == k])
                                            for k in ks}}


def additivity(study: Study, rows: list[dict], base_ppl: float) -> dict:
    """For every plan scored on held-out text (not pruned): Σ_j single-layer increase against the real one."""
    single = {(r["position"], r["k"]): r["perplexity_increase"] for r in rows}
    pairs = []
    for (ks, kept, text), value in study.scores.items():
        if kept is None and text == "held_out" and sum(k != b for k, b in zip(ks, study.base)) > 1:
            predicted = sum(single.get((j, k), 0.0) for j, k in enumerate(ks))
            pairs.append({"top_k": list(ks), "sum_of_single_layer": predicted, "real": value - base_ppl})
    ratio = [p["real"] / p["sum_of_single_layer"] for p in pairs if p["sum_of_single_layer"] > 0]
    return {"plans": pairs, "spearman": spearman([p["sum_of_single_layer"] for p in pairs], [p["real"] for p in pairs]),
            "real_over_sum_median": float(np.median(ratio)) if ratio else None}


UNSEEN = Path(__import__("onnxruntime").__file__).parent / "ThirdPartyNotices.txt"
METHOD_STYLES = {"lexi:plan": "o-", "model-aware:plan": "v-", "self-kl:plan": "D-", "calibration:plan": "P-",
                 "uniform": "s-", "expert_pruning": "^-"}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    points = doc["points"]
    for axis, text in zip(axes, ("held_out", "unseen")):
        for method, style in METHOD_STYLES.items():
            axis.plot([p["cost"][method] for p in points], [p[text][method] for p in points], style, label=method)
        axis.scatter([c for p in points for c in p["cost"]["random"]], [v for p in points for v in p[text]["random"]],
                     marker="x", color="gray", label="random plans")
        axis.scatter([1.0], [doc["base"][text]], marker="*", s=150, color="black", label="base")
        axis.set_xlabel(f"measured MoE cost (expert reads per decode step of {DECODE_BATCH} sequences, 1 = base)")
        axis.set_ylabel(f"{text.replace('_', '-')} perplexity")
        axis.set_yscale("log")
        axis.set_title(f"{doc['model']['name']}: {text.replace('_', '-')} perplexity against measured cost")
        axis.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def memoised(function):
    cache: dict = {}
    return lambda ks: cache[tuple(ks)] if tuple(ks) in cache else cache.setdefault(tuple(ks), function(ks))


def verdict(point: dict, method: str, texts: tuple[str, ...] = ("held_out", "unseen")) -> dict:
    """The issue's done-when for one plan at one budget, on each of `texts`."""
    result = {}
    for text in texts:
        value, randoms = point[text][method], point[text]["random"]
        result[text] = {"no_worse_than_uniform": value <= point[text]["uniform"],
                        "random_plans_beaten": sum(value < r for r in randoms), "random_plans": len(randoms)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="'demo' or a folder written by a training script")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moe-compile" / "corpus")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=None,
                        help="score only this many evenly spaced windows of each text (default: all of them)")
    parser.add_argument("--unseen", type=Path, default=UNSEEN, help="a text of another style (default: "
                        "onnxruntime's ThirdPartyNotices.txt)")
    parser.add_argument("--refine", type=int, default=2, help="`plan --refine`: rounds of local search")
    args = parser.parse_args()
    if args.windows is not None and args.windows < DECODE_BATCH:
        parser.error(f"--windows: at least {DECODE_BATCH} (the cost is counted on decode steps of {DECODE_BATCH} windows)")
    torch.set_num_threads(args.threads)
    started = time.time()
    corpus = load_corpus(args.cache)
    study = Study(corpus, args.model, args.windows, args.unseen)
    base_sum = sum(study.base)
    args.results.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory()  # not in --results: two runs side by side would share it
    calibration_file = Path(scratch.name) / "calibration.txt"
    calibration_file.write_text(Corpus.joined(corpus.calibration), encoding="utf-8")
    options = {e: ProfileOptions(estimator=e, calibration=str(calibration_file) if e == "calibration" else None)
               for e in ESTIMATORS}
    objectives = {"self": OutputObjective(study.moe_model, options["self-kl"]),
                  "calibration": OutputObjective(study.moe_model, options["calibration"])}
    objective_of = {e: objectives["calibration" if e == "calibration" else "self"] for e in ESTIMATORS}
    scorers = {name: memoised(objective.plan_kl) for name, objective in objectives.items()}
    profiles, profile_seconds = {}, {}
    for e in ESTIMATORS:
        tick = time.time()
        profiles[e] = profile_model(study.moe_model, options[e], show_progress=False,
                                    objective=objective_of[e] if options[e].measures_output else None)
        profile_seconds[e] = round(time.time() - tick, 2)
    scratch.cleanup()
    base = {text: study.perplexity(study.base, text=text) for text in study.texts}
    base_cost = study.decode_cost(study.base)
    usage = study.usage()
    order = pruning_order(usage, study.moe_model.layers)
    pruning_costs: dict[int, float] = {}
    rng = np.random.default_rng(SEED)
    points = []
    for budget in BUDGETS:
        sum_k = int(budget * base_sum + 0.5)
        plans = {"uniform": uniform_plan(study.base, sum_k)}
        verified = {}
        for e in ESTIMATORS:
            scorer = scorers["calibration" if e == "calibration" else "self"]
            doc = make_plan(study.moe_model, profiles[e], Budget(fraction=budget), ActiveExperts(),
                            objective=scorer, refine_passes=args.refine)
            plans[f"{e}:dp"] = doc["verified"]["dp_top_k"]
            plans[f"{e}:plan"] = [layer["top_k"] for layer in doc["layers"]]
            verified[e] = doc["verified"]
        randoms = [random_plan(study.base, sum_k, rng) for _ in range(RANDOM_PLANS)]
        cost = {name: study.decode_cost(ks) / base_cost for name, ks in plans.items()}
        cost["random"] = [study.decode_cost(ks) / base_cost for ks in randoms]
        drops = match_pruning(study, order, usage, cost["uniform"] * base_cost, pruning_costs)
        kept = kept_after(order, drops, usage)
        cost["expert_pruning"] = pruning_costs[drops] / base_cost
        point = {"budget": budget, "sum_k": sum_k, "base_sum_k": base_sum, "cost": cost,
                 "plans": {**plans, "random": randoms, "expert_pruning_experts_kept": [len(k) for k in kept]},
                 "verified": verified}
        for text in study.texts:
            scores = {name: study.perplexity(ks, text=text) for name, ks in plans.items()}
            scores["expert_pruning"] = study.perplexity(study.base, kept, text=text)
            scores["random"] = [study.perplexity(ks, text=text) for ks in randoms]
            scores["random_best"] = min(scores["random"])
            scores["random_median"] = float(np.median(scores["random"]))
            point[text] = scores
        point["done_when"] = {f"{e}:{kind}": verdict(point, f"{e}:{kind}") for e in ESTIMATORS for kind in ("dp", "plan")}
        print(json.dumps({"budget": budget, "held_out": point["held_out"], "unseen": point["unseen"]}), flush=True)
        points.append(point)
    rows = single_layer_losses(study, base["held_out"])
    doc = {
        "model": {"name": args.model, "sha256": study.moe_model.fingerprint["sha256"]},
        "texts": {"held_out": {"windows": int(study.held_out.shape[0]), "window": int(study.held_out.shape[1])},
                  "unseen": {"source": f"onnxruntime {__import__('onnxruntime').__version__} wheel, "
                                       "onnxruntime/ThirdPartyNotices.txt" if args.unseen == UNSEEN else str(args.unseen),
                             "sha256": hashlib.sha256(args.unseen.read_bytes()).hexdigest(),
                             "windows": int(study.texts["unseen"].shape[0])},
                  "calibration": "the corpus's calibration split (estimator calibration, its guard, expert pruning)"},
        "cost": f"distinct experts read per decode step of {DECODE_BATCH} sequences, summed over MoE layers, "
                f"counted on {COST_WINDOWS} held-out windows, relative to the base model",
        "base": {**base, "sum_k": base_sum, "cost": 1.0, "expert_reads_per_step": base_cost},
        "profiles": {e: {"options": profiles[e].to_json()["options"], "seconds": profile_seconds[e],
                         "sensitivity": [{str(k): d for k, d in layer.delta.items()} for layer in profiles[e].layers]}
                     for e in ESTIMATORS},
        "points": points,
        "single_layer_losses": rows,
        "delta_vs_loss": {e: delta_vs_loss(rows, profiles[e]) for e in ESTIMATORS},
        "additivity": additivity(study, rows, base["held_out"]),
        "evaluations": study.evaluations,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "wall_seconds": round(time.time() - started, 1),
    }
    name = Path(args.model).name  # quality.json itself is the first study, of LExI's plan alone (docs/demo.md)
    write_text_atomic(args.results / f"quality-{name}.json", json.dumps(doc, indent=1) + "\n")
    plot(doc, args.results / f"quality-{name}.png")
    print(json.dumps({"base": doc["base"], "delta_vs_loss": {e: v["spearman_all_pairs"] for e, v in doc["delta_vs_loss"].items()},
                      "wall_seconds": doc["wall_seconds"]}))


if __name__ == "__main__":
    main()
