"""Decode and prefill throughput of the onnxruntime-target ONNX on ONNX Runtime (CPU) against the
PyTorch eager model, in one run on one machine, 2 threads each; and the LExI plan's speed-up.

Model: Qwen2-MoE style, hidden 512, 6 layers, 16 experts, top-4, a shared expert, seeded random
weights. Backends: transformers' own model in eager PyTorch (the baseline), our rewritten model in
PyTorch (GroupedMoE reference op), and ONNX Runtime on the exported graph at the base top-k and
under a LExI plan at half the budget. Prints JSON; saves it under benchmarks/results/.

    python benchmarks/onnx_speed.py
"""

from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.plan import Budget, dumps, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.loader import load_causal_lm, load_moe_model
from moe_compile.export.decoder import empty_past
from moe_compile.export.exporter import compiled_model, export_onnx
from moe_compile.validate.runners import OnnxRuntimeRunner, TorchRunner
from moe_compile.validate.timing import decode_throughput, prefill_throughput

THREADS = 2
CONFIG = {"vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1024, "moe_intermediate_size": 256,
          "shared_expert_intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8,
          "num_key_value_heads": 4, "num_experts": 16, "num_experts_per_tok": 4, "norm_topk_prob": False,
          "max_position_embeddings": 2048, "tie_word_embeddings": False}
PREFILL_TOKENS, DECODE_PROMPT, DECODE_STEPS = 512, 16, 64
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


def write_model(folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2_moe", **CONFIG))
    seeded_init(model, seed=0)
    model.save_pretrained(folder)


def measure(runner, past: list[np.ndarray], generator: np.random.Generator) -> dict:
    prefill = generator.integers(0, CONFIG["vocab_size"], (1, PREFILL_TOKENS))
    prompt = generator.integers(0, CONFIG["vocab_size"], (1, DECODE_PROMPT))
    return {"decode": decode_throughput(runner, prompt, past, steps=DECODE_STEPS).to_json(),
            "prefill": prefill_throughput(runner, prefill, past).to_json()}


def main() -> None:
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder)
        ir = load_moe_model(folder)
        profile = profile_model(ir, ProfileOptions(), show_progress=False)
        plan_path = Path(tmp) / "plan.json"
        plan = make_plan(ir, profile, Budget(fraction=0.5), ActiveExperts())
        plan_path.write_text(dumps(plan))
        export_onnx(ir, Path(tmp) / "base.onnx", target="onnxruntime")
        export_onnx(ir, Path(tmp) / "plan.onnx", target="onnxruntime", plan=plan_path)
        past = [t.numpy() for t in empty_past(load_causal_lm(ir), 1, torch.float32)]
        runners = {
            "pytorch_eager_transformers": TorchRunner(load_causal_lm(ir)),
            "pytorch_grouped_moe_reference": TorchRunner(compiled_model(ir, None)[0]),
            "onnxruntime_base": OnnxRuntimeRunner(Path(tmp) / "base.onnx", threads=THREADS),
            "onnxruntime_plan_half_budget": OnnxRuntimeRunner(Path(tmp) / "plan.onnx", threads=THREADS),
        }
        results = {name: measure(runner, past, np.random.default_rng(0)) for name, runner in runners.items()}

    def ratio(a: str, b: str, phase: str) -> float:
        return results[a][phase]["tokens_per_s"] / results[b][phase]["tokens_per_s"]

    import onnxruntime

    report = {
        "benchmark": "onnx_speed",
        "device": f"CPU: {platform.processor() or platform.machine()}, {THREADS} threads (torch and ONNX Runtime)",
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "model": {"model_type": "qwen2_moe", **CONFIG},
        "workload": {"prefill_tokens": PREFILL_TOKENS, "decode_batch": 1, "decode_prompt": DECODE_PROMPT,
                     "decode_steps": DECODE_STEPS},
        "plan": {"budget": 0.5, "sum_k": plan["predicted"]["sum_k"], "base_sum_k": plan["predicted"]["base_sum_k"],
                 "top_k": [layer["top_k"] for layer in plan["layers"]]},
        "tokens_per_s": results,
        "speedup": {
            "decode_onnxruntime_vs_pytorch_eager": ratio("onnxruntime_base", "pytorch_eager_transformers", "decode"),
            "prefill_onnxruntime_vs_pytorch_eager": ratio("onnxruntime_base", "pytorch_eager_transformers", "prefill"),
            "decode_plan_vs_base_onnxruntime": ratio("onnxruntime_plan_half_budget", "onnxruntime_base", "decode"),
            "prefill_plan_vs_base_onnxruntime": ratio("onnxruntime_plan_half_budget", "onnxruntime_base", "prefill"),
        },
        "command": "python benchmarks/onnx_speed.py",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
