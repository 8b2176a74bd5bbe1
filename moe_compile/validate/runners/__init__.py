"""Runners, one module per backend: each takes the decoder's inputs by name (numpy) and returns
its outputs by name (`infer`), and says which it takes (`input_names` where it has a file).

The comparison (compare.py) and the generation loop (generation.py) see only this interface,
never a backend. Heavy backends (onnxruntime, tensorrt) are imported when a runner is built.
"""

from .onnxrt import OnnxRuntimeRunner
from .pytorch import TorchRunner
from .trt import TensorRTRunner, load_engine

__all__ = ["OnnxRuntimeRunner", "TensorRTRunner", "TorchRunner", "load_engine"]
