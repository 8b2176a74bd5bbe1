"""validate checks the candidate's greedy tokens with one forward pass of the reference
(validate/generation.py: greedy_choices) instead of the reference's own step-by-step run: the
two must say the same thing, including where a run first differs."""

import numpy as np
import pytest
import torch

from moe_compile.compiler.compiled import compiled_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.decoder import empty_past
from moe_compile.validate.generation import greedy_choices, greedy_generate
from moe_compile.validate.runners import TorchRunner


class SteeredAt:
    """`runner`, except that from its `call`-th call on, the last position's logits favour `token`."""

    def __init__(self, runner, call: int, token: int) -> None:
        self.runner, self.call, self.token, self.calls = runner, call, token, 0

    def infer(self, feed):
        outputs = dict(self.runner.infer(feed))
        if self.calls >= self.call:
            logits = np.array(outputs["logits"])
            logits[:, -1, self.token] = logits.max() + 10.0
            outputs["logits"] = logits
        self.calls += 1
        return outputs


def _runner(tiny_model_dirs, model_type):
    model = compiled_model(load_moe_model(tiny_model_dirs[model_type]))[0]
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)).numpy()
    return TorchRunner(model), prompt, [t.numpy() for t in empty_past(model, 2, torch.float32)]


@pytest.mark.parametrize("model_type", ["qwen2_moe", "deepseek_v3"])
def test_a_runner_agrees_with_its_own_greedy_run(tiny_model_dirs, model_type):
    runner, prompt, empty = _runner(tiny_model_dirs, model_type)
    tokens = greedy_generate(runner, prompt, 12, empty)
    assert np.array_equal(greedy_choices(runner, prompt, tokens, empty), tokens)


def test_the_first_difference_and_the_token_there_are_the_step_by_step_ones(tiny_model_dirs):
    runner, prompt, empty = _runner(tiny_model_dirs, "qwen2_moe")
    own = greedy_generate(runner, prompt, 12, empty)
    token = int((own[0, 6] + 1) % runner.wrapper.model.config.vocab_size)  # not what the runner would pick there
    other = greedy_generate(SteeredAt(runner, 6, token), prompt, 12, empty)
    first = int(np.flatnonzero((own != other).any(axis=0))[0])
    assert first == 6
    choices = greedy_choices(runner, prompt, other, empty)
    assert int(np.flatnonzero((choices != other).any(axis=0))[0]) == first
    assert np.array_equal(choices[:, first], own[:, first])
    assert np.array_equal(choices[:, :first], own[:, :first])
