"""Decode and prefill throughput of the onnxruntime-target ONNX on ONNX Runtime (CPU) against the
PyTorch eager model, in one run on one machine, 2 threads each; and the LExI plan's speed-up.

Model: Qwen2-MoE style, hidden 512, 6 layers, 16 experts, top-4, a shared expert, seeded random
weights. Backends: transformers' own model in eager PyTorch (the baseline), our rewritten model in
PyTorch (GroupedMoE reference op), and ONNX Runtime on the exported graph at the base top-k and
under a LExI plan at half the budget. Measured by `moe-compile bench`'s own code
(moe_compile/validate/bench.py), every backend in each of ROUNDS rounds, the order reversed every
other round; each speed-up is the median of the rounds' own ratios. Prints JSON; saves it under
benchmarks/results/.

    python benchmarks/onnx_speed.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.plan import Budget, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.commands.bench import export_for_onnxruntime
from moe_compile.compiler.loader import load_moe_model
from moe_compile.validate.backends import BenchModel, TopKSetting, select_backends
from moe_compile.validate.bench import (
    Workload,
    add_speedups,
    cpu_model,
    in_rounds,
    machine_description,
    measure,
    pooled_rounds,
)

THREADS = 2
CONFIG = {"vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1024, "moe_intermediate_size": 256,
          "shared_expert_intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8,
          "num_key_value_heads": 4, "num_experts": 16, "num_experts_per_tok": 4, "norm_topk_prob": False,
          "max_position_embeddings": 4096, "tie_word_embeddings": False}
# Decode: batch 1 after a 16-token prompt, 64 steps. Prefill: one 512-token prompt.
DECODE, PREFILL = Workload(1, 16, 64), Workload(1, 512, 1)
REPEATS, ROUNDS = 5, 3  # every backend timed in each round, the order reversed every other round
RESULTS = Path(__file__).parent / "results"


def seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter from one generator: norms 1, biases small, weights ~ N(0, 1/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.normal_(0.0, 0.02, generator=generator)
            elif "embed_tokens" in name:
                param.normal_(0.0, 1.0, generator=generator)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5, generator=generator)


def write_model(folder: Path, **overrides) -> None:
    """The benchmark's model (CONFIG, with `overrides`), seeded, saved to `folder`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2_moe", **{**CONFIG, **overrides}))
    seeded_init(model, seed=0)
    model.save_pretrained(folder)


def main() -> None:
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder)
        ir = load_moe_model(folder)
        profile = profile_model(ir, ProfileOptions(), show_progress=False)
        plan = make_plan(ir, profile, Budget(fraction=0.5), ActiveExperts())
        settings = [TopKSetting("base", {spec.index: spec.base_top_k for spec in ir.layers}),
                    TopKSetting("plan", {layer["index"]: layer["top_k"] for layer in plan["layers"]})]
        model = BenchModel(ir, "fp32", THREADS, export=export_for_onnxruntime)
        rows = []
        runs = [(backend, setting) for backend in select_backends(["transformers", "pytorch", "onnxruntime-cpu"], None)
                for setting in (settings[:1] if backend.base_only else settings)]
        try:
            for number, (backend, setting) in in_rounds(runs, ROUNDS):
                rows += measure(backend, setting, model, [DECODE, PREFILL], repeats=REPEATS, round_number=number)
        finally:
            model.close()
    add_speedups(rows)
    round_rows, rows = rows, pooled_rounds(rows)

    def pick(backend: str, setting: str, workload: Workload, phase: str) -> dict:
        (row,) = [r for r in rows if (r["backend"], r["setting"], r["prompt"]) == (backend, setting, workload.prompt)]
        return {"tokens_per_s": row[f"{phase}_tokens_per_s"], "vs_transformers": row["vs_transformers"][phase],
                "vs_transformers_range": row["vs_transformers_range"][phase],
                "vs_base_top_k": (row["vs_base_top_k"] or {}).get(phase)}

    report = {
        "benchmark": "onnx_speed",
        "device": f"CPU: {cpu_model()}, {THREADS} threads (torch and ONNX Runtime)",
        "machine": machine_description(THREADS),
        "model": {"model_type": "qwen2_moe", **CONFIG},
        "workload": {"prefill_tokens": PREFILL.prompt, "decode_batch": DECODE.batch, "decode_prompt": DECODE.prompt,
                     "decode_steps": DECODE.new_tokens, "repeats": REPEATS,
                     "rounds": ROUNDS},
        "plan": {"budget": 0.5, "sum_k": plan["predicted"]["sum_k"], "base_sum_k": plan["predicted"]["base_sum_k"],
                 "top_k": [layer["top_k"] for layer in plan["layers"]]},
        "decode": {f"{b}/{s}": pick(b, s, DECODE, "decode") for b, s in _runs(rows)},
        "prefill": {f"{b}/{s}": pick(b, s, PREFILL, "prefill") for b, s in _runs(rows)},
        "rows": rows, "round_rows": round_rows,
        "command": "python benchmarks/onnx_speed.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("device", "decode", "prefill")}, indent=2))


def _runs(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((r["backend"], r["setting"]) for r in rows))


if __name__ == "__main__":
    main()
