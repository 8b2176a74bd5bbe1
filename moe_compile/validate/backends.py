"""The backends `bench` can run on this machine, each a way to build a runner for a top-k setting.

    transformers      the unmodified model, eager PyTorch: the baseline (base top-k only)
    pytorch           the rewritten model with the GroupedMoE op (reference op on the CPU)
    pytorch-layered   the same, one decoder layer's weights resident at a time (compiler/layered_model.py),
                      for a model larger than memory; named only (--backends): each forward rereads
                      the checkpoint
    pytorch-cuda      the same on the GPU (the op's CUDA implementation, where one is registered)
    onnxruntime-cpu   the onnxruntime-target ONNX in ONNX Runtime, CPU provider
    onnxruntime-cuda  the same ONNX with ONNX Runtime's CUDA provider
    tensorrt          the engine given with --engine, at the top-k it was built for

Which exist is decided when `bench` runs; asking for one that is not there is one line, exit 2.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moe_compile.compiler.ir import MoEModel
from moe_compile.errors import BackendUnavailable, InvalidInput
from moe_compile.quantization.scheme import QuantScheme


@dataclass(frozen=True)
class TopKSetting:
    """Per-layer top-k to run at: the model's own (`base`) or a plan's; with `quantize`, as a
    weight-quantized ONNX file (ONNX Runtime CPU only)."""

    name: str
    top_k: dict[int, int]
    quantize: QuantScheme | None = None

    @property
    def sum_k(self) -> int:
        return sum(self.top_k.values())

    @property
    def onnx_file_name(self) -> str:
        """The name bench gives this setting's export."""
        return f"{self.name.replace(' ', '-')}.onnx"


@dataclass
class BenchModel:
    """What every backend builds its runner from: the model, its dtype, ONNX files per setting
    (given with --onnx, or made on first use by `export`, which the command supplies, into a
    folder removed at the end) and the engine given with --engine, under its setting."""

    ir: MoEModel
    dtype: str = "fp32"
    threads: int | None = None
    onnx_files: dict[str, Path] = field(default_factory=dict)
    engine_files: dict[str, Path] = field(default_factory=dict)
    # (ir, out, dtype, setting) -> writes the onnxruntime-target ONNX: given by the command (commands/bench.py),
    # so validate/ compares runners and never exports itself
    export: Callable[[MoEModel, Path, str, TopKSetting], None] | None = None
    _exports: tempfile.TemporaryDirectory | None = None

    def onnx_for(self, setting: TopKSetting) -> Path:
        if setting.name not in self.onnx_files:
            if self.export is None:
                raise InvalidInput(f"no ONNX file for the {setting.name} setting (give --onnx)")
            if self._exports is None:
                self._exports = tempfile.TemporaryDirectory(prefix="moe-compile-bench-")
            path = Path(self._exports.name) / setting.onnx_file_name
            self.export(self.ir, path, self.dtype, setting)
            self.onnx_files[setting.name] = path
        return self.onnx_files[setting.name]

    @functools.cached_property
    def _past_shapes(self) -> list[tuple[int, ...]]:
        """[heads, 0, head_dim] of each cache tensor, from one short pass of the model's skeleton:
        the shapes do not depend on the weights, so none is read (as the streamed export traces)."""
        import torch

        from moe_compile.compiler.compiled import skeleton_model
        from moe_compile.export.decoder import empty_past

        return [tuple(t.shape[1:]) for t in empty_past(skeleton_model(self.ir)[0], 1, torch.float32)]

    def empty_past(self, batch: int, length: int = 0) -> list[np.ndarray]:
        """A cache of `length` positions (zeros) for `batch` sequences, as runners take it."""
        return [np.zeros((batch, heads, length, dim), dtype=np.float32) for heads, _, dim in self._past_shapes]

    @functools.cached_property
    def _tensor_bytes(self) -> dict[str, int]:
        """Each checkpoint tensor's bytes at the bench precision, from the headers."""
        import torch

        from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
        from moe_compile.dtypes import torch_dtype

        itemsize = torch.finfo(torch_dtype(self.dtype)).bits // 8
        index = SafetensorsCheckpoint(self.ir.path).index
        return {name: math.prod(info.shape) * itemsize for name, info in index.items()}

    @property
    def weight_bytes(self) -> int:
        """The checkpoint's tensors at the bench precision: what a PyTorch backend holds."""
        return sum(self._tensor_bytes.values())

    @property
    def largest_unit_bytes(self) -> int:
        """The largest of the units a layered forward holds at a time (a decoder layer, or a
        module outside the layers such as the embedding), at the bench precision."""
        import re

        units: dict[str, int] = {}
        for name, nbytes in self._tensor_bytes.items():
            layer = re.match(r"(.*\.layers\.\d+)\.", name)
            unit = layer.group(1) if layer else name.rpartition(".")[0]
            units[unit] = units.get(unit, 0) + nbytes
        return max(units.values(), default=0)

    def close(self) -> None:
        if self._exports is not None:
            self._exports.cleanup()


@dataclass(frozen=True)
class Backend:
    name: str
    device: str  # "cpu" | "cuda"
    build: Callable[[BenchModel, TopKSetting], object]
    base_only: bool = False  # the transformers baseline knows no plan
    runs_onnx: bool = False  # its ONNX file is exported before the backend is measured
    runs_engine: bool = False  # it runs only the settings an engine was given for
    named_only: bool = False  # run only when --backends names it, not among "every backend here"
    too_big_hint: str = ""  # said after the shortfall when it does not fit
    # the host memory its runner will take, estimated before it is built; None: not estimated (GPU backends)
    host_bytes: Callable[[BenchModel, TopKSetting], int] | None = None

    def runs(self, setting: TopKSetting, model: BenchModel) -> bool:
        if setting.quantize is not None:  # QMoE / MatMulNBits: measured on ONNX Runtime's CPU provider only
            return self.runs_onnx and self.device == "cpu"
        if self.base_only:
            return setting.name == "base"
        return setting.name in model.engine_files if self.runs_engine else True


# What an ONNX Runtime CPU session takes beyond nothing: it maps the weights from the file and
# holds a prepacked copy of the matrix products' ones. On Qwen3-30B-A3B-shaped exports (2026-12-05), after loading
# and a 16-token prefill: 10.9 GB anonymous for a 12.5 GB fp32 file, 3.5 GB for a 3.0 GB int4 one;
# bench's own rows (resident set growth, file pages included) 13.7 and 4.8-5.3 GB for the same files.
# Since then, an fp32 default export's few-token nodes also hold their experts' halves, gathered
# when the session starts (export/lowering/sorted_experts.py): counted as they are.
ORT_SESSION_PER_FILE_BYTE = 1.2
ORT_SESSION_EXTRA_BYTES = 1 << 30


def _onnx_session_bytes(model: BenchModel, setting: TopKSetting) -> int:
    from moe_compile.export.lowering.sorted_experts import gathered_halves_bytes
    from moe_compile.onnx_files import external_data_files, read_onnx_graph

    path = model.onnx_for(setting)
    graph = read_onnx_graph(path)
    files = [path, *(path.parent / name for name in external_data_files(graph, path))]
    return (int(ORT_SESSION_PER_FILE_BYTE * sum(file.stat().st_size for file in files)) + gathered_halves_bytes(graph)
            + ORT_SESSION_EXTRA_BYTES)


def _weight_bytes(model: BenchModel, setting: TopKSetting) -> int:
    return model.weight_bytes


# A layered forward holds one unit's weights, and a second while a layer's experts are converted;
# the activations and the KV cache come on top (small beside a layer at bench's workloads).
LAYERED_EXTRA_BYTES = 1 << 30


def _layered_bytes(model: BenchModel, setting: TopKSetting) -> int:
    return 2 * model.largest_unit_bytes + LAYERED_EXTRA_BYTES


def memory_shortfall(backend: Backend, model: BenchModel, setting: TopKSetting) -> str | None:
    """Why `backend` cannot run `setting` in the memory this machine has now, or None."""
    from .memory import available_bytes

    available = available_bytes()
    if backend.host_bytes is None or available is None:
        return None
    needed = backend.host_bytes(model, setting)
    if needed <= available:
        return None
    return f"needs about {needed / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB available" + (
        f" ({backend.too_big_hint})" if backend.too_big_hint else "")


def _torch_model(model: BenchModel, setting: TopKSetting):
    from moe_compile.compiler.compiled import compiled_model

    return compiled_model(model.ir, model.dtype, setting.top_k)[0]


def _pytorch_layered(model: BenchModel, setting: TopKSetting):
    from moe_compile.compiler.layered_model import layered_model

    from .runners import TorchRunner

    return TorchRunner(layered_model(model.ir, model.dtype, setting.top_k)[0])


def _transformers(model: BenchModel, setting: TopKSetting):
    from moe_compile.compiler.loader import load_causal_lm
    from moe_compile.dtypes import torch_dtype

    from .runners import TorchRunner

    return TorchRunner(load_causal_lm(model.ir).to(torch_dtype(model.dtype)).eval())


def _pytorch(device: str) -> Callable:
    def build(model: BenchModel, setting: TopKSetting):
        from .runners import TorchRunner

        return TorchRunner(_torch_model(model, setting), device)

    return build


def _onnxruntime(provider: str) -> Callable:
    def build(model: BenchModel, setting: TopKSetting):
        from .runners import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model.onnx_for(setting), providers=[provider], threads=model.threads)

    return build


def _tensorrt(model: BenchModel, setting: TopKSetting):
    from .runners import TensorRTRunner

    return TensorRTRunner(model.engine_files[setting.name])


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def available_backends(engine: str | None = None) -> dict[str, Backend]:
    """Every backend this machine can run now, in the order they are reported (tensorrt: when
    an engine is given, which select_backends has checked TensorRT and a GPU for)."""
    layered = "--backends pytorch-layered runs it one decoder layer at a time"
    backends = [Backend("transformers", "cpu", _transformers, base_only=True, host_bytes=_weight_bytes),
                Backend("pytorch", "cpu", _pytorch("cpu"), host_bytes=_weight_bytes, too_big_hint=layered),
                Backend("pytorch-layered", "cpu", _pytorch_layered, host_bytes=_layered_bytes, named_only=True)]
    providers = _onnxruntime_providers()
    if "CPUExecutionProvider" in providers:
        backends.append(Backend("onnxruntime-cpu", "cpu", _onnxruntime("CPUExecutionProvider"), runs_onnx=True,
                                host_bytes=_onnx_session_bytes))
    if _cuda_available():
        backends.append(Backend("pytorch-cuda", "cuda", _pytorch("cuda")))
    if "CUDAExecutionProvider" in providers:
        backends.append(Backend("onnxruntime-cuda", "cuda", _onnxruntime("CUDAExecutionProvider"), runs_onnx=True))
    if engine:
        backends.append(Backend("tensorrt", "cuda", _tensorrt, runs_engine=True))
    return {backend.name: backend for backend in backends}


KNOWN_BACKENDS = ("transformers", "pytorch", "pytorch-layered", "onnxruntime-cpu", "pytorch-cuda", "onnxruntime-cuda",
                  "tensorrt")
_NEEDS = {"onnxruntime-cpu": "onnxruntime (pip install onnxruntime)", "pytorch-cuda": "a CUDA GPU visible to torch",
          "onnxruntime-cuda": "onnxruntime-gpu and a CUDA GPU"}


def select_backends(names: list[str] | None, engine: str | None) -> list[Backend]:
    """The backends to run: the ones named (each must be available), or all available."""
    if names and "tensorrt" in names and not engine:
        raise InvalidInput("the tensorrt backend runs an engine: give --engine engine.plan")
    if engine and names and "tensorrt" not in names:
        raise InvalidInput("--engine is run by the tensorrt backend: add tensorrt to --backends")
    if engine:
        from moe_compile.plugins.tensorrt.builder import require_tensorrt

        require_tensorrt("bench --engine")
    available = available_backends(engine)
    if not names:
        return [backend for backend in available.values() if not backend.named_only]
    unknown = [name for name in names if name not in KNOWN_BACKENDS]
    if unknown:
        raise InvalidInput(f"unknown backend '{unknown[0]}' (known: {', '.join(KNOWN_BACKENDS)})")
    missing = [name for name in names if name not in available]
    if missing:
        raise BackendUnavailable(f"backend '{missing[0]}' is not available on this machine: it needs {_NEEDS[missing[0]]}")
    return [available[name] for name in KNOWN_BACKENDS if name in names]
