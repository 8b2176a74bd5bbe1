"""Greedy decoding through any runner: the prompt once, then one token at a time; and checking
another runner's greedy tokens against a runner's own choices in one forward pass.

A runner that can keep its outputs where it made them (`infer_keeping`: ONNX Runtime's own
buffers on the CPU, OrtValues on a GPU) gets its KV cache back as its own values at every step,
so the cache is not copied per token (on a GPU it stays on the device); other runners exchange
numpy. The number of positions is bounded by the model's context.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from moe_compile.errors import InvalidInput
from moe_compile.export.decoder import past_names, present_names


def decoder_feed(ids: np.ndarray, past: dict, past_length: int) -> dict:
    """Decoder inputs for `ids` [B, S] after `past_length` cached positions, all positions valid."""
    batch, step = ids.shape
    return {"input_ids": ids, "attention_mask": np.ones((batch, past_length + step), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(past_length, past_length + step), (batch, step)).copy(), **past}


def positions_needed(prompt_length: int, new_tokens: int) -> int:
    """Positions a greedy run of `new_tokens` after a prompt fills: the last token is never fed back."""
    return prompt_length + new_tokens - 1


def check_context(prompt_length: int, new_tokens: int, max_positions: int | None) -> None:
    """InvalidInput unless the prompt and `new_tokens` fit the model's context."""
    if prompt_length < 1 or new_tokens < 1:
        raise InvalidInput(f"a generation needs a prompt and at least one new token (got {prompt_length} prompt "
                           f"tokens, {new_tokens} new)")
    if max_positions is not None and positions_needed(prompt_length, new_tokens) > max_positions:
        raise InvalidInput(f"{prompt_length} prompt tokens + {new_tokens} new tokens need "
                           f"{positions_needed(prompt_length, new_tokens)} positions; the model has {max_positions}")


def cached_step(runner, ids: np.ndarray, past: dict, past_length: int) -> tuple[dict, dict]:
    """Run `ids` [B, S] after `past_length` cached positions (`past`: the past_key_values.* inputs);
    -> (the outputs, the past for the next step: these presents, kept where the runner made them)."""
    num_layers = len(past) // 2
    presents = present_names(num_layers)
    keeping = getattr(runner, "infer_keeping", None)
    feed = decoder_feed(ids, past, past_length)
    outputs = keeping(feed, keep=presents) if keeping else runner.infer(feed)
    return outputs, {name: outputs[present] for name, present in zip(past_names(num_layers), presents)}


def greedy_steps(runner, prompt: np.ndarray, empty_past: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the next token [B, 1] after the prompt (prefill), then after each decode step."""
    past = dict(zip(past_names(len(empty_past) // 2), empty_past))
    ids, length = prompt, 0
    while True:
        outputs, past = cached_step(runner, ids, past, length)
        length += ids.shape[1]
        ids = np.asarray(outputs["logits"])[:, -1].argmax(-1).astype(np.int64)[:, None]
        yield ids


def greedy_generate(runner, prompt: np.ndarray, new_tokens: int, empty_past: list[np.ndarray],
                    max_positions: int | None = None) -> np.ndarray:
    """prompt [B, S] int64 -> the generated tokens [B, new_tokens], within `max_positions`."""
    check_context(prompt.shape[1], new_tokens, max_positions)
    return np.concatenate(list(itertools.islice(greedy_steps(runner, prompt, empty_past), new_tokens)), axis=1)


def greedy_choices(runner, prompt: np.ndarray, tokens: np.ndarray, empty_past: list[np.ndarray]) -> np.ndarray:
    """What `runner` picks greedily after the prompt and after each prefix of `tokens` [B, N]
    (another runner's greedy run), from one forward over the prompt and tokens[:, :-1] -> [B, N].

    Up to the first position where the choices differ from `tokens`, they are the tokens
    `runner`'s own greedy run would make (each is chosen after the same prefix), and at that
    position they are its own token: so `tokens` equals `runner`'s greedy run exactly where
    the choices equal `tokens`, up to the first difference. One forward instead of N: what makes
    validate's layer-by-layer reference, which reads every layer's weights per forward, affordable."""
    ids = np.concatenate([prompt, tokens[:, :-1]], axis=1)
    outputs, _ = cached_step(runner, ids, dict(zip(past_names(len(empty_past) // 2), empty_past)), 0)
    return np.asarray(outputs["logits"])[:, prompt.shape[1] - 1:].argmax(-1).astype(np.int64)
