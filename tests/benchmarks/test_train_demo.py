"""benchmarks/train_demo.py: a very small model trains for a few steps, and eval scores it."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from demo_corpus import Corpus
from train_demo import build_and_train, parse_args

from moe_compile.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """This repository's own docs as the corpus (no download), 2 MoE layers, 30 steps."""
    docs = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in sorted(ROOT.glob("docs/*.md"))}
    held_out = {"README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
    corpus = Corpus(train=docs, held_out=held_out, calibration={}, provenance={"package": "moe-compile", "version": "docs"})
    out = tmp_path_factory.mktemp("train") / "model"
    args = parse_args(["--steps", "30", "--batch", "4", "--seq-len", "32", "--lr", "3e-3", "--vocab", "300",
                       "--layers", "2", "--experts", "4", "--top-k", "2", "--hidden", "32",
                       "--expert-intermediate", "16", "--shared-intermediate", "16", "--held-out-stride", "1", "--eval-every", "10"])
    record = build_and_train(corpus, out, args, curve=out.parent / "curve.png")
    return out, record


def test_loss_falls_and_the_run_is_recorded(trained):
    out, record = trained
    history = record["history"]
    assert len(history["loss"]) == record["training"]["steps_done"] == 30
    assert sum(history["loss"][-5:]) / 5 < sum(history["loss"][:5]) / 5 - 0.3
    assert history["held_out_loss"][-1] < history["held_out_loss"][0]
    assert all(aux > 0 for aux in history["aux_loss"])  # the router's balancing loss was on
    assert (out.parent / "curve.png").stat().st_size > 0
    assert json.loads((out / "training.json").read_text())["held_out"] == record["held_out"]
    assert {path.name for path in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                     "heldout.txt", "training.json"}


def test_eval_of_the_trained_folder_prints_the_recorded_perplexity(trained, capsys):
    out, record = trained
    assert main(["eval", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(record["held_out"]["perplexity"], rel=1e-6)
    assert result["vocab_size"] == record["tokenizer"]["vocab_size"] == 300
