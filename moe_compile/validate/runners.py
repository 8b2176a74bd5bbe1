"""Runners: each takes the decoder's inputs by name (numpy) and returns its outputs by name.

The comparison (compare.py) and the generation loop (generation.py) see only this interface,
never a backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moe_compile.errors import BackendUnavailable, InvalidInput, one_line
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


class OnnxRuntimeRunner:
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("ONNX Runtime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise InvalidInput(f"{path}: ONNX Runtime cannot load it ({one_line(exc)})") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        typed = {name: value.astype(_NUMPY_TYPES.get(self.input_types[name], value.dtype))
                 for name, value in feed.items()}
        return {name: out.astype(np.float32) if out.dtype != np.int64 else out
                for name, out in zip(self.output_names, self.session.run(None, typed))}


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
