"""The built-in `demo` model: a small Qwen2-MoE language model trained on real text.

benchmarks/train_demo.py trains it (on the docs of a pinned PyPI sdist; see
benchmarks/demo_corpus.py) and writes demo_model/ beside this module: config.json,
model.safetensors, tokenizer.json, heldout.txt (the held-out text `moe-compile eval` scores)
and training.json (data provenance, steps, wall time, loss history, held-out perplexity).
It is an ordinary Hugging Face folder, read in place from the installed package, so the
demo goes through exactly the same loading path as a user's model.
"""

from __future__ import annotations

from pathlib import Path

from moe_compile.jsonio import read_json_object

DEMO_FOLDER = Path(__file__).with_name("demo_model")


def demo_model_folder() -> Path:
    return DEMO_FOLDER


def demo_config() -> dict:
    return read_json_object(DEMO_FOLDER / "config.json", "config")


def training_record() -> dict:
    """What benchmarks/train_demo.py recorded: data provenance, steps, wall time, held-out perplexity."""
    return read_json_object(DEMO_FOLDER / "training.json", "training record")
