"""Greedy decoding through any runner: the prompt once, then one token at a time."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from moe_compile.export.decoder import past_names, present_names


def decoder_feed(ids: np.ndarray, past: dict, past_length: int) -> dict:
    """Decoder inputs for `ids` [B, S] after `past_length` cached positions, all positions valid."""
    batch, step = ids.shape
    return {"input_ids": ids, "attention_mask": np.ones((batch, past_length + step), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(past_length, past_length + step), (batch, step)).copy(), **past}


def greedy_steps(runner, prompt: np.ndarray, empty_past: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the next token [B, 1] after the prompt (prefill), then after each decode step."""
    num_layers = len(empty_past) // 2
    past = dict(zip(past_names(num_layers), empty_past))
    ids, length = prompt, 0
    while True:
        outputs = runner.infer(decoder_feed(ids, past, length))
        length += ids.shape[1]
        ids = outputs["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        past = {p: outputs[n] for p, n in zip(past_names(num_layers), present_names(num_layers))}
        yield ids


def greedy_generate(runner, prompt: np.ndarray, new_tokens: int, empty_past: list[np.ndarray]) -> np.ndarray:
    """prompt [B, S] int64 -> the generated tokens [B, new_tokens]."""
    return np.concatenate(list(itertools.islice(greedy_steps(runner, prompt, empty_past), new_tokens)), axis=1)
