"""Greedy decoding through any runner: the prompt once, then one token at a time."""

from __future__ import annotations

import numpy as np

from moe_compile.export.decoder import past_names, present_names


def greedy_generate(runner, prompt: np.ndarray, new_tokens: int, empty_past: list[np.ndarray]) -> np.ndarray:
    """prompt [B, S] int64 -> the generated tokens [B, new_tokens]."""
    num_layers = len(empty_past) // 2
    batch = prompt.shape[0]
    past = dict(zip(past_names(num_layers), empty_past))
    ids, length, generated = prompt, 0, []
    for _ in range(new_tokens):
        step = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, length + step), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(length, length + step), (batch, step)).copy(), **past}
        outputs = runner.infer(feed)
        ids = outputs["logits"][:, -1].argmax(-1).astype(np.int64)[:, None]
        generated.append(ids)
        past = {p: outputs[n] for p, n in zip(past_names(num_layers), present_names(num_layers))}
        length += step
    return np.concatenate(generated, axis=1)
