"""A torch causal LM (the PyTorch reference, or the eager transformers baseline) as a runner."""

from __future__ import annotations

import numpy as np
import torch

from moe_compile.export.decoder import CausalLMWithCache, past_names, present_names


class TorchRunner:
    """A torch causal LM behind the runner interface: the rewritten model (GroupedMoE op) is the
    PyTorch reference; the unmodified transformers model is the eager baseline."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.wrapper = CausalLMWithCache(model.to(self.device)).eval()
        self.num_layers = self.wrapper.num_layers
        self.dtype = next(model.parameters()).dtype
        self.output_names = ["logits", *present_names(self.num_layers)]

    def _tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device, dtype)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        past = tuple(self._tensor(feed[name], self.dtype) for name in past_names(self.num_layers))
        with torch.no_grad():
            outputs = self.wrapper(self._tensor(feed["input_ids"]), self._tensor(feed["attention_mask"]),
                                   self._tensor(feed["position_ids"]), past)
        return {name: out.float().cpu().numpy() for name, out in zip(self.output_names, outputs)}
