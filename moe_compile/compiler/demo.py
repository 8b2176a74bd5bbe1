"""The built-in models, small MoE language models trained on real text: `demo` (Qwen2-MoE, in
demo_model/) and `demo-deepseek` (DeepSeek-V3: dense first layer, grouped sigmoid routing with a
score bias, shared expert, routed scaling; in demo_deepseek_model/).

benchmarks/train_demo.py trains them (on the docs of a pinned PyPI sdist; see
benchmarks/demo_corpus.py) and writes each folder beside this module: config.json,
model.safetensors, tokenizer.json, heldout.txt (the held-out text `moe-compile eval` scores)
and training.json (data provenance, steps, wall time, loss history, held-out perplexity).
It is an ordinary Hugging Face folder, read in place from the installed package, so the
demo goes through exactly the same loading path as a user's model.
"""

from __future__ import annotations

from pathlib import Path

from moe_compile.jsonio import read_json_object

DEMO_FOLDER = Path(__file__).with_name("demo_model")
BUILT_IN_MODELS = {"demo": DEMO_FOLDER, "demo-deepseek": Path(__file__).with_name("demo_deepseek_model")}


def demo_model_folder(name: str = "demo") -> Path:
    return BUILT_IN_MODELS[name]


def demo_config(name: str = "demo") -> dict:
    return read_json_object(BUILT_IN_MODELS[name] / "config.json", "config")


def training_record(name: str = "demo") -> dict:
    """What benchmarks/train_demo.py recorded: data provenance, steps, wall time, held-out perplexity."""
    return read_json_object(BUILT_IN_MODELS[name] / "training.json", "training record")
