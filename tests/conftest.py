import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, marker_requirements

from marker_requirements import tensorrt_missing, tensorrt_rtx_missing  # noqa: E402


def pytest_configure(config):
    # Remembered weight digests (compiler/digest_cache.py) go to a folder of this run's own, not
    # the user's cache; every command a test starts inherits it.
    if "MOE_COMPILE_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["MOE_COMPILE_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe-compile-test-cache-")
        config._moe_compile_cache_dir = os.environ["MOE_COMPILE_CACHE_DIR"]
    # Without a GPU the grouped-MoE Triton kernels run in Triton's CPU interpreter; triton reads
    # the switch when a kernel module is imported, so it is set before any test module loads.
    if not _has_cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # One CPU thread per xdist worker (and per command a test starts): two workers of two threads
    # each on a 2-core machine wait on each other's threads most of the time (four test files
    # took 296 s so, 153 s with one thread per worker).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_unconfigure(config):
    folder = getattr(config, "_moe_compile_cache_dir", None)
    if folder:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    reasons = {
        "gpu": None if _has_cuda() else "no CUDA GPU on this machine",
        "tensorrt": tensorrt_missing(),
        "tensorrt_rtx": tensorrt_rtx_missing(),
        "slow": None if os.environ.get("MOE_COMPILE_SLOW") == "1" else "slow test: set MOE_COMPILE_SLOW=1",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny random model folder per architecture (see tiny_models.py)."""
    from tiny_models import TINY_CONFIGS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    folders = {}
    for model_type in TINY_CONFIGS:
        save_tiny_model(model_type, root / model_type)
        folders[model_type] = root / model_type
    return folders


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model_dirs, tmp_path_factory):
    """The onnxruntime-target export of the tiny qwen2_moe, made once: what the python backend
    serves (tests/deploy) and what the fault suite deploys and validates (tests/faults)."""
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(load_moe_model(tiny_model_dirs["qwen2_moe"]), path, target="onnxruntime")
    return path


@pytest.fixture
def bf16_dot_in_interpreter(monkeypatch):
    """Triton 3.6's interpreter multiplies bf16 tl.dot operands as their raw uint16 bits (numpy
    has no bf16); widen them to fp32 first, as the GPU's MMA does exactly. Interpreter only."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widened(handle):
        if handle.dtype != tl.bfloat16:
            return handle
        data = interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot",
                        lambda self, a, b, d, *args: original(self, widened(a), widened(b), d, *args))
