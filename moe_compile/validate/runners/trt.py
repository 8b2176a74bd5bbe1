"""A TensorRT engine as a runner: `load_engine` (the loader) and `TensorRTRunner`. TensorRT is
imported when an engine is loaded, never before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moe_compile.dtypes import ELEMENT_TYPES
from moe_compile.errors import InvalidInput


def load_engine(path: str | Path):
    """A serialized TensorRT engine, deserialized. An engine whose plugins were built ahead of
    time (`aot_impl`) carries their compiled kernels, so no plugin code is registered first."""
    from moe_compile.plugins.tensorrt.builder import error_logger, require_tensorrt

    path = Path(path)
    trt = require_tensorrt(f"running the engine {path}")
    if path.is_dir():
        raise InvalidInput(f"engine file '{path}' is a folder")
    if not path.is_file():
        raise InvalidInput(f"engine file '{path}' does not exist")
    log = error_logger(trt)
    engine = trt.Runtime(log).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise InvalidInput(f"{path} is not a TensorRT engine this TensorRT ({trt.__version__}) and GPU can load"
                           + (f" ({log.last_error()})" if log.last_error() else ""))
    return engine


class TensorRTRunner:
    """An engine behind the runner interface: each input copied to the GPU in the engine's type,
    its shape set, the outputs allocated at the shapes TensorRT infers from them, one
    `execute_async_v3` on a stream of our own (TensorRT warns about the default stream). The
    optimization profile is the first that holds the inputs' shapes (builder.profile_ranges:
    decode, then prefill), so each token bucket runs the tactics TensorRT chose for it."""

    name = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.engine = load_engine(self.path)
        import tensorrt as trt  # load_engine has checked that it is there

        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        unknown = [n for n in names if self.engine.get_tensor_dtype(n).name not in _TORCH_TYPES]
        if unknown:
            raise InvalidInput(f"{path}: tensor '{unknown[0]}' has TensorRT type "
                               f"{self.engine.get_tensor_dtype(unknown[0]).name}, which moe-compile does not feed")
        self.dtypes = {n: getattr(torch, _TORCH_TYPES[self.engine.get_tensor_dtype(n).name]) for n in names}
        self.stream = torch.cuda.Stream()
        self._empty = torch.empty(1, device="cuda")  # the address given for a tensor with no elements
        self.profile = 0  # a new context starts on profile 0

    def _address(self, tensor: torch.Tensor) -> int:
        return tensor.data_ptr() if tensor.numel() else self._empty.data_ptr()

    def _use_profile(self, shapes: dict[str, tuple[int, ...]]) -> None:
        ranges = [{name: [tuple(s) for s in self.engine.get_tensor_profile_shape(name, index)] for name in shapes}
                  for index in range(self.engine.num_optimization_profiles)]
        index = profile_for(shapes, ranges)
        if index is not None and index != self.profile:
            self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.profile = index

    def _set_input(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_input_shape(name, tuple(tensor.shape)):
            low, _, high = (tuple(shape) for shape in self.engine.get_tensor_profile_shape(name, self.profile))
            raise InvalidInput(f"{self.path}: input '{name}' of shape {tuple(tensor.shape)} is outside the engine's "
                               f"profile ({low} to {high}); build it with a larger --max-batch or --max-seq")
        self.context.set_tensor_address(name, self._address(tensor))

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.cuda.stream(self.stream):
            inputs = {name: torch.from_numpy(np.ascontiguousarray(feed[name])).to("cuda", self.dtypes[name])
                      for name in self.input_names}
            self._use_profile({name: tuple(tensor.shape) for name, tensor in inputs.items()})
            for name, tensor in inputs.items():
                self._set_input(name, tensor)
            outputs = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                         device="cuda") for name in self.output_names}
            for name, tensor in outputs.items():
                self.context.set_tensor_address(name, self._address(tensor))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT could not run {self.path}")
        self.stream.synchronize()
        return {name: (out.float() if out.is_floating_point() else out).cpu().numpy() for name, out in outputs.items()}


def profile_for(shapes: dict[str, tuple[int, ...]], ranges: list[dict[str, list[tuple[int, ...]]]]) -> int | None:
    """The first profile whose (min, opt, max) of every input holds its shape; None if none does.
    Inputs without a dynamic axis report the same shape for min and max, so they always fit."""
    def holds(profile: dict[str, list[tuple[int, ...]]]) -> bool:
        return all(len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True))
                   for name, shape in shapes.items() for low, _, high in [profile[name]])

    return next((index for index, profile in enumerate(ranges) if holds(profile)), None)


# tensorrt.DataType member name -> torch dtype name (moe_compile/dtypes.py)
_TORCH_TYPES = {row.tensorrt: row.torch_name for row in ELEMENT_TYPES if row.tensorrt != "FP8"}
