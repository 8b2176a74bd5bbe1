"""Generation is bounded by the model's context, and ONNX Runtime keeps the KV cache in its own
values between steps (IOBinding) instead of copying it through numpy at every token."""

import numpy as np
import pytest

from moe_compile.errors import InvalidInput
from moe_compile.validate.generation import greedy_generate
from moe_compile.validate.runners import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def runner(tiny_onnx):
    return OnnxRuntimeRunner(tiny_onnx)


def _empty_past(runner, batch):
    return [np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in runner.session.get_inputs() if i.name.startswith("past_key_values.")]


class NumpyOnly:
    """The same session behind the plain numpy interface (no infer_keeping)."""

    def __init__(self, runner):
        self.infer = runner.infer


def test_the_cache_is_handed_on_in_onnx_runtimes_own_buffers_and_the_tokens_do_not_change(runner, monkeypatch):
    """Each step is fed the very arrays the step before returned, and they are views of ONNX
    Runtime's output buffers (not numpy copies): no copy of the cache per token."""
    prompt = np.arange(1, 11, dtype=np.int64).reshape(2, 5)
    expected = greedy_generate(NumpyOnly(runner), prompt, 6, _empty_past(runner, 2))
    fed, returned = [], []
    keeping = runner.infer_keeping

    def spy(feed, keep):
        fed.append({name: value for name, value in feed.items() if name.startswith("past_key_values.")})
        outputs = keeping(feed, keep)
        returned.append({name: outputs[name] for name in keep})
        return outputs

    monkeypatch.setattr(runner, "infer_keeping", spy)
    got = greedy_generate(runner, prompt, 6, _empty_past(runner, 2))
    assert (got == expected).all()
    for before, after in zip(returned, fed[1:]):
        assert [id(value) for value in before.values()] == [id(value) for value in after.values()]
        assert all(not value.flags["OWNDATA"] and value.base is not None for value in before.values())


@pytest.mark.parametrize("prompt_length, new_tokens", [(100, 30), (129, 1), (1, 129)])
def test_generation_past_the_context_is_refused_before_any_step(runner, prompt_length, new_tokens, monkeypatch):
    monkeypatch.setattr(runner, "infer_keeping", None)  # no step may run
    prompt = np.ones((1, prompt_length), np.int64)
    with pytest.raises(InvalidInput, match="positions; the model has 128"):
        greedy_generate(runner, prompt, new_tokens, _empty_past(runner, 1), max_positions=128)


def test_generation_up_to_the_context_runs(runner):
    tokens = greedy_generate(runner, np.ones((1, 126), np.int64), 3, _empty_past(runner, 1), max_positions=128)
    assert tokens.shape == (1, 3)
