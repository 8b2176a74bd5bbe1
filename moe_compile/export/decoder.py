"""One ONNX graph for prefill and decode: the causal LM with its KV cache as plain tensors.

Inputs and outputs carry optimum's names, so tools that know optimum's decoders know ours:

    input_ids [batch, sequence]            logits [batch, sequence, vocab]
    attention_mask [batch, past + sequence]
    position_ids [batch, sequence]
    past_key_values.N.key / .value         present.N.key / .value  [batch, heads, past + sequence, dim]

Prefill passes a past of length 0. The cache's tensor shapes are read from one real forward
pass, so architectures with their own head layouts (DeepSeek's MLA) need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BATCH, SEQUENCE, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"


def past_names(num_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def cache_tensors(cache) -> list[torch.Tensor]:
    """A transformers Cache -> [key 0, value 0, key 1, value 1, ...]."""
    return [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]


class CausalLMWithCache(nn.Module):
    """forward(input_ids, attention_mask, position_ids, past) -> (logits, *present)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past: tuple[torch.Tensor, ...]):
        from transformers import DynamicCache

        # Every layer keeps its full history; sliding-window layers are limited by the mask.
        cache = DynamicCache()
        for layer in range(self.num_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        return (out.logits, *cache_tensors(out.past_key_values))


@dataclass(frozen=True)
class ExampleInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    past: tuple[torch.Tensor, ...]

    def as_args(self) -> tuple:
        return (self.input_ids, self.attention_mask, self.position_ids, self.past)

    def as_feed(self, num_layers: int) -> dict:
        """The same inputs as ONNX Runtime takes them (numpy, by name)."""
        feed = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        feed.update(zip(past_names(num_layers), self.past))
        return {name: tensor.detach().cpu().numpy() for name, tensor in feed.items()}


def decoder_inputs(model: nn.Module, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...]) -> ExampleInputs:
    """Inputs for `input_ids` following `past` (whose sequence axis is 2), all positions valid."""
    batch, sequence = input_ids.shape
    past_length = past[0].shape[2]
    return ExampleInputs(
        input_ids=input_ids,
        attention_mask=torch.ones(batch, past_length + sequence, dtype=torch.long),
        position_ids=torch.arange(past_length, past_length + sequence).expand(batch, sequence).contiguous(),
        past=past)


def empty_past(model: nn.Module, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A past of length 0 with the model's own cache shapes (read from a one-token pass)."""
    with torch.no_grad():
        out = model(input_ids=torch.zeros(batch, 1, dtype=torch.long), use_cache=True)
    return tuple(t.new_zeros(t.shape[0], t.shape[1], 0, t.shape[3]).to(dtype) for t in cache_tensors(out.past_key_values))


def example_inputs(model: nn.Module, dtype: torch.dtype, batch: int = 2, past_length: int = 4, sequence: int = 3,
                   seed: int = 0) -> ExampleInputs:
    """Inputs to trace with: no axis of size 0 or 1, so torch.export keeps every axis dynamic."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    past = tuple(torch.randn(t.shape[0], t.shape[1], past_length, t.shape[3], generator=generator).to(dtype)
                 for t in empty_past(model, batch, dtype))
    return decoder_inputs(model, torch.randint(0, vocab, (batch, sequence), generator=generator), past)


_INPUT_AXES = {"input_ids": {0: BATCH, 1: SEQUENCE}, "attention_mask": {0: BATCH, 1: TOTAL},
               "position_ids": {0: BATCH, 1: SEQUENCE}}
_PAST_AXES = {0: BATCH, 2: PAST}


def dynamic_axes(input_name: str) -> dict[int, str]:
    """The dynamic axes of a decoder input and what each one is (BATCH, SEQUENCE, PAST, TOTAL);
    empty for a name the decoder does not take. The export traces with these and the TensorRT
    builder reads them back to give each axis its range."""
    if input_name.startswith("past_key_values."):
        return dict(_PAST_AXES)
    return dict(_INPUT_AXES.get(input_name, {}))


def dynamic_shapes(num_layers: int) -> tuple:
    dims = {name: torch.export.Dim(name) for name in (BATCH, SEQUENCE, PAST, TOTAL)}

    def shape(input_name: str) -> dict:
        return {axis: dims[role] for axis, role in dynamic_axes(input_name).items()}

    return (shape("input_ids"), shape("attention_mask"), shape("position_ids"),
            tuple(shape(name) for name in past_names(num_layers)))
