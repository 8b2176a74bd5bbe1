"""Train a built-in demo model on real text: `demo` (Qwen2-MoE) or `demo-deepseek` (DeepSeek-V3).

    docutils 0.21.2 docs (demo_corpus.py) -> byte-level BPE tokenizer (train split only)
    -> --arch qwen2_moe (`demo`): 8 MoE layers x 16 experts, top-4, gated shared expert,
       balanced by the router's load-balancing loss
    -> --arch deepseek_v3 (`demo-deepseek`): layer 0 dense, 7 MoE layers x 32 fine-grained
       experts, top-6 of 2 of 4 groups, sigmoid scores, 1 shared expert, routed scaling 2.5,
       MLA attention; balanced without an auxiliary loss, as DeepSeek-V3 does: after every
       step each router's e_score_correction_bias moves by --bias-update-rate towards
       under-loaded experts (sign of mean load - load), outside the gradient
    -> fixed seeds, cosine learning rate
    -> OUT/: config.json, model.safetensors, tokenizer.json, heldout.txt, training.json
       (+ the loss curve as a PNG under benchmarks/results/)

The held-out perplexity in training.json is computed after saving, by loading OUT through
the same path `moe-compile eval` uses, so the shipped number is the one eval prints.

    python benchmarks/train_demo.py                      # writes moe_compile/compiler/demo_model
    python benchmarks/train_demo.py --arch deepseek_v3   # writes moe_compile/compiler/demo_deepseek_model
    python benchmarks/train_demo.py --steps 20 --out /tmp/demo --layers 2 --experts 4 --top-k 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_corpus import Corpus, load_corpus

from moe_compile.atomic import atomic_path, write_text_atomic

END_OF_TEXT = "<|endoftext|>"


def qwen2_moe_config(vocab_size: int, layers: int, experts: int, top_k: int, hidden: int, expert_intermediate: int,
                     shared_intermediate: int) -> dict:
    return {
        "model_type": "qwen2_moe", "vocab_size": vocab_size, "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "moe_intermediate_size": expert_intermediate,
        "shared_expert_intermediate_size": shared_intermediate, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": experts, "num_experts_per_tok": top_k,
        "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "router_aux_loss_coef": 0.01,
    }


def deepseek_v3_config(vocab_size: int, layers: int, experts: int, top_k: int, hidden: int, expert_intermediate: int,
                       shared_intermediate: int) -> dict:
    """MLA shapes scaled up from tests/tiny_models.py's deepseek_v3 (which every export target handles)."""
    if shared_intermediate % expert_intermediate:
        raise SystemExit(f"--shared-intermediate {shared_intermediate}: deepseek_v3's shared expert is "
                         f"n_shared_experts x --expert-intermediate {expert_intermediate}")
    return {
        "model_type": "deepseek_v3", "vocab_size": vocab_size, "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "moe_intermediate_size": expert_intermediate,
        "n_shared_experts": shared_intermediate // expert_intermediate, "n_routed_experts": experts,
        "num_experts_per_tok": top_k, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2,
        "norm_topk_prob": True, "routed_scaling_factor": 2.5, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": hidden // 2, "kv_lora_rank": hidden // 4,
        "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 32, "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    }


class RouterLoss:
    """qwen2_moe: the router's load-balancing loss is part of the loss (router_aux_loss_coef)."""

    description = "router load-balancing loss"
    metric = "aux_loss"

    def __init__(self, model) -> None:
        self.coef = model.config.router_aux_loss_coef

    def forward_kwargs(self) -> dict:
        return {"output_router_logits": True}

    def after_step(self, out) -> tuple[float, float]:
        """(the next-token loss, the balancing metric) of this step."""
        return out.loss.item() - self.coef * out.aux_loss.item(), out.aux_loss.item()


class BiasBalancer:
    """deepseek_v3: auxiliary-loss-free balancing (DeepSeek-V3, section 2.1.2). Each router's
    e_score_correction_bias (a buffer, used for the choice of experts only) moves by `rate`
    after every step: up for experts picked less than the mean, down for those picked more."""

    metric = "max_load"  # the most loaded expert's share of picks over the mean share, worst layer

    def __init__(self, model, rate: float) -> None:
        self.rate = rate
        self.description = f"aux-loss-free: sign bias update at rate {rate}, no auxiliary loss"
        self.counts: dict = {}
        for name, module in model.named_modules():
            if hasattr(module, "e_score_correction_bias"):
                module.register_forward_hook(self._count(module))

    def _count(self, router):
        def hook(module, inputs, output) -> None:
            if module.training:
                indices = output[2]
                self.counts[router] = torch.bincount(indices.flatten(), minlength=router.num_experts).float()
        return hook

    def forward_kwargs(self) -> dict:
        return {}

    def after_step(self, out) -> tuple[float, float]:
        worst = 0.0
        with torch.no_grad():
            for router, load in self.counts.items():
                router.e_score_correction_bias += self.rate * torch.sign(load.mean() - load)
                worst = max(worst, (load.max() / load.mean()).item())
        self.counts.clear()
        return out.loss.item(), worst


@dataclass(frozen=True)
class Arch:
    """One trainable demo: its config, its balancing, where it ships, its default size."""
    name: str  # the built-in model's name
    config: Callable[..., dict]
    balancer: Callable[[object, argparse.Namespace], object]
    folder: str
    curve: str
    defaults: dict


ARCHS = {
    "qwen2_moe": Arch("demo", qwen2_moe_config, lambda model, args: RouterLoss(model), "demo_model",
                      "demo_training.png", dict(layers=8, experts=16, top_k=4, expert_intermediate=48,
                                                shared_intermediate=128)),
    "deepseek_v3": Arch("demo-deepseek", deepseek_v3_config, lambda model, args: BiasBalancer(model, args.bias_update_rate),
                        "demo_deepseek_model", "demo_deepseek_training.png",
                        dict(layers=8, experts=32, top_k=6, expert_intermediate=32, shared_intermediate=32)),
}


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (every byte is a token, so any text encodes), trained on `texts` only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def token_stream(tokenizer, files: dict[str, str]) -> torch.Tensor:
    """Every file's tokens, in path order, each followed by the end-of-text token."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    ids: list[int] = []
    for path in sorted(files):
        ids += tokenizer.encode(files[path]).ids + [eot]
    return torch.tensor(ids, dtype=torch.long)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, balancer, stream: torch.Tensor, held_out: torch.Tensor, *, steps: int, batch: int, seq_len: int,
          lr: float, seed: int, max_seconds: float = math.inf, eval_every: int = 100, progress=None) -> dict:
    """AdamW on random windows of `stream`, balanced by `balancer`; returns the loss history.
    Stops early past `max_seconds`."""
    from moe_compile.validate.perplexity import module_logits, window_loss

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    history: dict = {"step": [], "loss": [], balancer.metric: [], "held_out_step": [], "held_out_loss": []}
    start = time.monotonic()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=max(1, steps // 20))
        offsets = torch.randint(0, len(stream) - seq_len, (batch,), generator=generator)
        inputs = torch.stack([stream[o:o + seq_len] for o in offsets.tolist()])
        model.train()
        out = model(input_ids=inputs, labels=inputs, **balancer.forward_kwargs())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss, balance = balancer.after_step(out)
        history["step"].append(step)
        history["loss"].append(loss)
        history[balancer.metric].append(balance)
        if (step + 1) % eval_every == 0 or step == steps - 1:
            model.eval()
            total, count = window_loss(module_logits(model), held_out)
            history["held_out_step"].append(step)
            history["held_out_loss"].append(total / count)
        if progress:
            progress(step, history)
        if time.monotonic() - start > max_seconds:
            break
    history["steps_done"] = len(history["step"])
    return history


def plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = torch.tensor(history["loss"])
    width = max(1, min(50, len(losses) // 10))
    smooth = torch.nn.functional.avg_pool1d(losses[None, None], width, stride=1)[0, 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["loss"], alpha=0.25, color="tab:blue")
    ax.plot(history["step"][width - 1:], smooth.tolist(), color="tab:blue", label=f"train (mean of {width})")
    ax.plot(history["held_out_step"], history["held_out_loss"], "o-", color="tab:orange", label="held-out sample")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token cross-entropy (nats)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def recorded_perplexity(folder: Path) -> dict:
    """The held-out perplexity of the saved folder, through `moe-compile eval`'s own path."""
    from moe_compile.commands.eval import evaluate

    return evaluate(str(folder), plan=None).to_json()


def balancing_record(config: dict, balancer) -> dict:
    """How experts were balanced; `demo`'s training.json keeps its original field."""
    if isinstance(balancer, RouterLoss):
        return {"router_aux_loss_coef": config["router_aux_loss_coef"]}
    return {"balancing": balancer.description, "bias_update_rate": balancer.rate}


def weights_sha256(folder: Path) -> str:
    import hashlib

    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def build_and_train(corpus: Corpus, out: Path, args: argparse.Namespace, curve: Path | None) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = ARCHS[args.arch]
    torch.manual_seed(args.seed)
    tokenizer = train_tokenizer([corpus.train[path] for path in sorted(corpus.train)], args.vocab)
    config = arch.config(tokenizer.get_vocab_size(), args.layers, args.experts, args.top_k, args.hidden,
                         args.expert_intermediate, args.shared_intermediate)
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"}))
    balancer = arch.balancer(model, args)
    stream = token_stream(tokenizer, corpus.train)
    held_out_text = Corpus.joined(corpus.held_out)
    from moe_compile.validate.perplexity import windows

    held_out_sample = windows(tokenizer.encode(held_out_text).ids, args.seq_len)[:: max(1, args.held_out_stride)][:16]
    started = time.time()

    def progress(step: int, history: dict) -> None:
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps} loss {history['loss'][-1]:.3f} "
                  f"{balancer.metric} {history[balancer.metric][-1]:.3f} "
                  f"{time.time() - started:.0f}s", flush=True)

    history = train(model, balancer, stream, held_out_sample, steps=args.steps, batch=args.batch, seq_len=args.seq_len,
                    lr=args.lr, seed=args.seed, max_seconds=args.max_minutes * 60, eval_every=args.eval_every,
                    progress=progress)
    wall = time.time() - started
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)  # config.json + model.safetensors
        (tmp / "generation_config.json").unlink(missing_ok=True)
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "heldout.txt").write_text(held_out_text, encoding="utf-8")
    record = {
        "data": corpus.provenance,
        "tokenizer": {"kind": "byte-level BPE (tokenizers)", "vocab_size": tokenizer.get_vocab_size(),
                      "train_tokens": len(stream)},
        "model": {"config": config, "parameters": sum(p.numel() for p in model.parameters())},
        "training": {"steps": args.steps, "steps_done": history["steps_done"], "batch": args.batch,
                     "seq_len": args.seq_len, "lr": args.lr, "seed": args.seed, "optimizer": "AdamW(0.9, 0.95), wd 0.01",
                     "schedule": "linear warmup 5%, cosine to 10%", **balancing_record(config, balancer),
                     "torch_threads": torch.get_num_threads(), "wall_seconds": round(wall, 1),
                     "final_train_loss": sum(history["loss"][-50:]) / len(history["loss"][-50:])},
        "held_out": recorded_perplexity(out),
        "weights_sha256": weights_sha256(out),
        "history": {key: [round(v, 5) if isinstance(v, float) else v for v in values]
                    for key, values in history.items() if isinstance(values, list)},
    }
    write_text_atomic(out / "training.json", json.dumps(record, indent=1) + "\n")
    if curve:
        plot_history(history, curve, f"{arch.name} MoE on {corpus.provenance['package']} {corpus.provenance['version']} "
                                     f"docs: held-out ppl {record['held_out']['perplexity']:.2f}")
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen2_moe",
                        help="qwen2_moe trains `demo`, deepseek_v3 trains `demo-deepseek`")
    parser.add_argument("--out", type=Path, help="default: moe_compile/compiler/<the built-in model's folder>")
    parser.add_argument("--curve", type=Path, help="default: benchmarks/results/<name>_training.png")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "moe-compile" / "corpus")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--max-minutes", type=float, default=38.0, help="stop early (recorded) past this")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=2509_02753)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--experts", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--expert-intermediate", type=int)
    parser.add_argument("--shared-intermediate", type=int)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between held-out samples on the curve")
    parser.add_argument("--held-out-stride", type=int, default=8, help="held-out windows sampled for the curve")
    parser.add_argument("--bias-update-rate", type=float, default=1e-3,
                        help="deepseek_v3: the aux-loss-free bias update per step (DeepSeek-V3's gamma)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args(argv)
    arch = ARCHS[args.arch]
    for key, value in arch.defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or ROOT / "moe_compile" / "compiler" / arch.folder
    args.curve = args.curve or ROOT / "benchmarks" / "results" / arch.curve
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    record = build_and_train(load_corpus(args.cache), args.out, args, args.curve)
    print(json.dumps({"held_out": record["held_out"], "training": record["training"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
