"""Held-out perplexity: the formula, the windows, and the shipped demo's recorded number."""

import math

import pytest
import torch

from moe_compile.commands.eval import evaluate
from moe_compile.compiler.demo import DEMO_FOLDER, training_record
from moe_compile.errors import InvalidInput
from moe_compile.validate.perplexity import eval_windows, module_logits, perplexity, windows


class _Uniform(torch.nn.Module):
    """Predicts every token with the same probability: its perplexity is the vocabulary size."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, use_cache=None):  # transformers' causal-LM interface, as module_logits calls it
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_uniform_prediction_has_the_vocabulary_size_as_perplexity():
    result = perplexity(module_logits(_Uniform(37)), windows(list(range(30)) * 20, window=16), vocab_size=37, batch=3)
    assert result.perplexity == pytest.approx(37.0) and result.loss == pytest.approx(math.log(37))
    assert result.tokens == (600 // 16) * 15


def test_windows_drop_the_tail_and_refuse_a_text_shorter_than_one():
    assert windows(list(range(10)), window=4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(InvalidInput, match="fewer than one window of 128"):
        windows(list(range(100)))


def test_the_shipped_demo_scores_the_perplexity_recorded_at_training_time():
    recorded = training_record()["held_out"]
    result = evaluate("demo")
    assert result.tokens == recorded["tokens"] and result.vocab_size == recorded["vocab_size"]
    assert result.perplexity == pytest.approx(recorded["perplexity"], rel=1e-5)


def test_a_folder_without_heldout_text_is_scored_on_the_demo_text(tiny_model_dirs, tmp_path):
    import shutil

    from moe_compile.validate.perplexity import held_out_text

    shutil.copy(DEMO_FOLDER / "tokenizer.json", tmp_path / "tokenizer.json")  # a tokenizer, no heldout.txt
    assert held_out_text(tmp_path) == DEMO_FOLDER / "heldout.txt"
    assert torch.equal(eval_windows(tmp_path), eval_windows(DEMO_FOLDER, DEMO_FOLDER / "heldout.txt"))
    (tmp_path / "heldout.txt").write_text("its own text " * 200)  # and the folder's own, once it has one
    assert held_out_text(tmp_path) == tmp_path / "heldout.txt"
    with pytest.raises(InvalidInput, match="has no tokenizer.json"):
        eval_windows(tiny_model_dirs["qwen2_moe"])
