"""Peak memory of the KL objective (self-kl, calibration, plan's refine and guard) at a real vocabulary.

`kl_profile.OutputObjective` keeps the base model's next-token log-probabilities [S, L, V] and
compares every plan's with them. At Qwen's vocabulary (151,936) and the default 32 x 128 tokens
each such tensor is 2.5 GB. This builds a small Qwen2-MoE with that vocabulary (two layers,
hidden 512; loaded whole), then in one child process each: the objective on 32 sampled
sequences and one plan scored, as shipped (log-softmax and KL a sequence at a time) and as it
was before (whole-tensor log-softmax and KL, written out here as the baseline). Reports each
one's peak RSS and wall time and how far their KL values differ. Prints JSON; saves
benchmarks/results/kl_objective_memory.json.

    python benchmarks/kl_objective_memory.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from onnx_speed import write_model  # noqa: E402

from moe_compile.atomic import write_text_atomic  # noqa: E402

VOCAB = 151936  # Qwen1.5 / Qwen2 / Qwen3
RESULTS = Path(__file__).parent / "results"
VARIANTS = ("per-sequence", "whole-tensor")


def whole_tensor(objective_class) -> None:
    """The baseline: the objective's log-softmax and KL over the whole [S, L, V] at once."""

    @torch.no_grad()
    def log_probs(self):
        return F.log_softmax(self.lm(input_ids=self.tokens, use_cache=False).logits.float(), dim=-1)

    def sequence_kl(self, top_k):
        self._set(top_k)
        try:
            plan = self._log_probs()
        finally:
            self._set({})
        base = self.base_log_probs
        return (base.exp() * (base - plan)).sum(-1).mean(-1)

    objective_class._log_probs, objective_class.sequence_kl = log_probs, sequence_kl


def child(folder: Path, variant: str) -> None:
    from moe_compile.compiler.lexi.kl_profile import OutputObjective
    from moe_compile.compiler.lexi.options import ProfileOptions
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.process_memory import peak_memory, start_sampling

    start_sampling()
    if variant == "whole-tensor":
        whole_tensor(OutputObjective)
    moe_model = load_moe_model(folder)
    started = time.perf_counter()
    objective = OutputObjective(moe_model, ProfileOptions(estimator="self-kl"))
    lowered = [spec.base_top_k - 1 for spec in moe_model.layers]
    kl = objective.plan_kl(lowered)
    print(json.dumps({"variant": variant, "seconds": time.perf_counter() - started, "peak_memory": peak_memory(),
                      "tokens": list(objective.tokens.shape), "plan": lowered, "sequence_kl": kl.tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # FOLDER VARIANT
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1])
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_model(folder, vocab_size=VOCAB, num_hidden_layers=2)
        runs = {variant: json.loads(subprocess.run([sys.executable, __file__, "--child", str(folder), variant],
                                                   check=True, capture_output=True, text=True).stdout)
                for variant in VARIANTS}
    shipped, baseline = (torch.tensor(runs[v]["sequence_kl"]) for v in VARIANTS)
    result = {
        "benchmark": "kl_objective_memory",
        "model": {"model_type": "qwen2_moe", "vocab_size": VOCAB, "num_hidden_layers": 2, "hidden_size": 512},
        "runs": runs,
        "peak_rss_ratio": runs["whole-tensor"]["peak_memory"]["peak_rss_bytes"]
        / runs["per-sequence"]["peak_memory"]["peak_rss_bytes"],
        "max_abs_kl_difference": float((shipped - baseline).abs().max()),
        "device": f"CPU: {platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "wall_seconds": round(time.time() - started, 1),
        "command": "python benchmarks/kl_objective_memory.py",
    }
    text = json.dumps(result, indent=1)
    print(text)
    write_text_atomic(RESULTS / "kl_objective_memory.json", text + "\n")


if __name__ == "__main__":
    main()
