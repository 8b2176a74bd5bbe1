"""LExI profile + plan at Qwen1.5-MoE-A2.7B's real layer shape, streamed from sharded safetensors.

Writes a random-weight model with 24 MoE layers of Qwen1.5-MoE-A2.7B's shape (60 experts,
hidden 2048, expert intermediate 1408, top-4, shared expert 5632; bf16, about 25 GB on disk,
one shard per layer), then times `moe-compile plan MODEL --budget 0.75` in a child process
and reads its peak RSS. Also times, on one layer, the one-pass profile against re-running
the layer once per k, and what each sensitivity estimator costs at this size:

- lexi and model-aware: `moe-compile profile MODEL --estimator E`, run whole (child process;
  its peak RSS from `--json`);
- self-kl and calibration run the whole model once per (layer, k) (and self-kl once per sampled
  token as well); at this size a run would take hours, so one layer-by-layer forward pass over
  the profile's tokens and one generation step are measured (child process) and the run is
  projected from them: passes x measured pass, labelled as a projection.

Prints one JSON document and saves it under benchmarks/results/.

    python benchmarks/lexi_scale.py [--folder DIR] [--layers 24] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from moe_compile.compiler.lexi.profile import ProfileOptions, layer_deltas
from moe_compile.compiler.loader import load_moe_model
from moe_compile.grouped_moe_op import grouped_moe_reference
from moe_compile.validate.bench import cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from checkpoint_shapes import QWEN15_MOE_A27B, layer_shapes  # noqa: E402

class RandomPool:
    """Random bf16 weights without drawing 12 billion normals: each tensor is a window of one
    pool of N(0, 1) values at a random offset, scaled by 1/sqrt(fan_in)."""

    def __init__(self, size: int = 1 << 27, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(size, generator=self.generator).to(torch.bfloat16)

    def tensor(self, *shape: int) -> torch.Tensor:
        count = 1
        for dim in shape:
            count *= dim
        start = int(torch.randint(0, self.pool.numel() - count, (1,), generator=self.generator))
        return (self.pool[start : start + count].view(*shape) * shape[-1] ** -0.5).clone()


def write_model(folder: Path, layers: int) -> float:
    started = time.perf_counter()
    config = {**QWEN15_MOE_A27B, "num_hidden_layers": layers, "architectures": ["Qwen2MoeForCausalLM"]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    pool = RandomPool()
    hidden = config["hidden_size"]
    weight_map = {}
    shards = layers + 1
    for layer in range(layers):
        tensors = {name: torch.ones(shape, dtype=torch.bfloat16) if name.endswith("norm.weight") else pool.tensor(*shape)
                   for name, shape in layer_shapes(config, layer).items()}
        shard = f"model-{layer + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, shard))
        print(f"wrote layer {layer + 1}/{layers}", file=sys.stderr, flush=True)
    rest = {"model.embed_tokens.weight": pool.tensor(config["vocab_size"], hidden),
            "lm_head.weight": pool.tensor(config["vocab_size"], hidden),
            "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    shard = f"model-{shards:05d}-of-{shards:05d}.safetensors"
    save_file(rest, folder / shard, metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return time.perf_counter() - started


def one_pass_speedup(folder: Path, options: ProfileOptions) -> dict:
    """Δ(k) for every k of layer 0: one routing pass versus running the layer once per k."""
    spec = load_moe_model(folder).layers[0]
    weights = spec.load_weights()
    started = time.perf_counter()
    fast = layer_deltas(spec, weights, options)
    one_pass = time.perf_counter() - started

    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + spec.index)
    started = time.perf_counter()
    slow = dict.fromkeys(fast, 0.0)
    gate_up, down = weights.gate_up.float(), weights.down.float()  # fp32 once, as the profile computes
    with torch.no_grad():
        for _ in range(options.draws):
            x = torch.randn(options.tokens, spec.hidden, generator=generator) * options.scale
            logits = F.linear(x, weights.router_weight.float())

            def run(k):
                return grouped_moe_reference(x, logits, gate_up, down, spec.attributes.with_top_k(k))

            y_base = run(spec.base_top_k)
            for k in slow:
                slow[k] += torch.linalg.matrix_norm(run(k) - y_base).item() / options.draws
    rerun = time.perf_counter() - started
    return {"layer": spec.index, "one_pass_s": one_pass, "rerun_per_k_s": rerun, "speedup": rerun / one_pass,
            "max_relative_difference": max(abs(fast[k] - slow[k]) / max(slow[k], 1e-12) for k in fast if slow[k])}


def run_json(command: list[str]) -> tuple[dict, float]:
    """Run a command that prints one JSON document, in a child process: (the document, wall seconds)."""
    started = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out), time.perf_counter() - started


def data_free_profile(folder: Path, estimator: str) -> dict:
    """`moe-compile profile FOLDER --estimator E`, whole: wall time and peak memory."""
    out = folder.parent / f"{folder.name}-{estimator}-profile.json"
    doc, seconds = run_json([sys.executable, "-m", "moe_compile", "profile", str(folder), "--estimator", estimator,
                             "--out", str(out), "--json"])
    out.unlink()
    out.with_suffix(".png").unlink()
    return {"measured": "whole run", "seconds": seconds, "peak_memory": doc["peak_memory"],
            "command": f"moe-compile profile MODEL --estimator {estimator}"}


def kl_pass_child(folder: Path) -> None:
    """In a child process: one layer-by-layer forward pass over the KL estimators' tokens and one
    generation step (one token per sequence), timed; prints JSON with the peak memory."""
    from moe_compile.compiler.layered_model import reference_lm
    from moe_compile.process_memory import peak_memory, start_sampling

    start_sampling()
    options = ProfileOptions()
    moe_model = load_moe_model(folder)
    lm = reference_lm(moe_model)
    tokens = torch.randint(int(moe_model.config.vocab_size), (options.samples, options.seq_len),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        started = time.perf_counter()
        lm(input_ids=tokens, use_cache=False)  # as kl_profile.OutputObjective scores a plan
        pass_s = time.perf_counter() - started
        started = time.perf_counter()
        lm(input_ids=tokens[:, :1])
        step_s = time.perf_counter() - started
    print(json.dumps({"pass_s": pass_s, "step_s": step_s, "tokens": list(tokens.shape), "peak_memory": peak_memory()}))


def kl_projection(folder: Path, moe_layers: int, base_top_k: int) -> dict:
    """What self-kl and calibration would cost here, projected from one measured pass and step."""
    measured, _ = run_json([sys.executable, __file__, "--kl-pass", str(folder)])
    options = ProfileOptions()
    profile_passes = 1 + moe_layers * (base_top_k - options.k_min)  # the base, then each (layer, k < base)
    generation_steps = options.seq_len - 1
    refine_round = moe_layers * (moe_layers - 1)  # plan --verify: every pair move is one scored pass
    calibration_s = profile_passes * measured["pass_s"]
    return {
        "measured": measured,
        "profile_passes": profile_passes, "generation_steps": generation_steps,
        "projected_profile_s": {"calibration": calibration_s,
                                "self-kl": calibration_s + generation_steps * measured["step_s"]},
        "projected_refine_round_s": refine_round * measured["pass_s"],
        "note": "projected from one measured layer-by-layer pass (passes x pass_s), not run whole",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, help="where to write the model (default: a temporary folder)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--keep", action="store_true", help="keep the model folder afterwards")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lexi_scale.json")
    parser.add_argument("--kl-pass", type=Path, help=argparse.SUPPRESS)  # the child of kl_projection
    args = parser.parse_args()
    if args.kl_pass:
        return kl_pass_child(args.kl_pass)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="qwen15-moe-shape-", dir="/var/tmp"))
    try:
        write_s = write_model(folder, args.layers)
        layer_bytes = load_moe_model(folder).layers[0].parameter_bytes
        routed_bytes = load_moe_model(folder).layers[0].load_weights().nbytes
        plan_path = folder.parent / f"{folder.name}-plan.json"
        command = [sys.executable, "-m", "moe_compile", "plan", str(folder), "--budget", "0.75", "--out", str(plan_path)]
        # the peak the plan process samples itself: a child's ru_maxrss starts at its parent's
        # size when it was spawned (Linux keeps the pre-exec high-water mark), here 3.8 GB
        plan, plan_s = run_json([*command, "--json"])
        peak_rss = plan["peak_memory"]["peak_rss_bytes"]
        plan_path.unlink()
        plan_path.with_suffix(".png").unlink()
        speedup = one_pass_speedup(folder, ProfileOptions())
        estimators = {e: data_free_profile(folder, e) for e in ("lexi", "model-aware")}
        estimators["kl"] = kl_projection(folder, args.layers, QWEN15_MOE_A27B["num_experts_per_tok"])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    result = {
        "benchmark": "lexi_scale",
        "device": f"CPU: {cpu_model()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "shape": {key: QWEN15_MOE_A27B[key] for key in (
            "num_experts", "hidden_size", "moe_intermediate_size", "num_experts_per_tok",
            "shared_expert_intermediate_size")} | {"moe_layers": args.layers, "dtype": "bfloat16"},
        "profile_options": ProfileOptions().__dict__,
        "write_model_s": write_s,
        "command": " ".join(["moe-compile", *command[3:]]),
        "profile_and_plan_s": plan_s,
        "peak_rss_bytes": peak_rss,
        "layer_bytes_on_disk": layer_bytes,
        "routed_expert_bytes_per_layer": routed_bytes,
        "rss_limit_bytes": 2 * layer_bytes + (1 << 30),
        "within_targets": plan_s <= 600 and peak_rss <= 2 * layer_bytes + (1 << 30),
        "plan_sum_k": plan["predicted"]["sum_k"], "base_sum_k": plan["predicted"]["base_sum_k"],
        "one_pass_vs_rerun": speedup,
        "estimators": estimators,
    }
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
