"""The built-in `demo` model: a small Qwen2-MoE-style model whose weights come from a fixed seed.

It is written once, as an ordinary Hugging Face folder (config.json + model.safetensors), into
the cache folder ($MOE_COMPILE_CACHE, default ~/.cache/moe-compile), so that the demo goes
through exactly the same loading path as a user's model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from moe_compile import __version__
from moe_compile.atomic import atomic_path

DEMO_SEED = 2509_02753
DEMO_CONFIG = {
    "model_type": "qwen2_moe",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 128,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "norm_topk_prob": False,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}


def cache_root() -> Path:
    return Path(os.environ.get("MOE_COMPILE_CACHE") or Path.home() / ".cache" / "moe-compile")


def demo_model_folder() -> Path:
    key = hashlib.sha256(json.dumps([DEMO_CONFIG, DEMO_SEED, __version__], sort_keys=True).encode()).hexdigest()
    folder = cache_root() / f"demo-{key[:12]}"
    if not (folder / "config.json").is_file():
        _write_demo(folder)
    return folder


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


def _write_demo(folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {key: value for key, value in DEMO_CONFIG.items() if key != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(DEMO_CONFIG["model_type"], **fields))
    seeded_init(model, DEMO_SEED)
    with atomic_path(folder, directory=True) as tmp:
        model.save_pretrained(tmp)
