"""What the `tensorrt` and `tensorrt_rtx` markers need, and why a test cannot run where it is
missing. Its own module (not conftest.py) so tests/test_markers.py can import it: with two
conftest.py files, `import conftest` finds whichever pytest loaded last."""

import importlib.util


def tensorrt_missing() -> str | None:
    """Why the `tensorrt` tests cannot run here: they need NVIDIA's full TensorRT (the module
    `tensorrt` with `tensorrt.plugin`, >= 10.8). TensorRT-RTX (module `tensorrt_rtx`, what CI
    installs) is another package without tensorrt.plugin; its tests use the `tensorrt_rtx` marker."""
    from moe_compile.plugins.tensorrt import MIN_TENSORRT, MIN_TENSORRT_TEXT, tensorrt_version

    if importlib.util.find_spec("tensorrt") is None:
        rtx = " (TensorRT-RTX is, but it is not TensorRT)" if importlib.util.find_spec("tensorrt_rtx") else ""
        return f"needs NVIDIA TensorRT >= {MIN_TENSORRT_TEXT} (module tensorrt): not installed{rtx}"
    import tensorrt

    if tensorrt_version(tensorrt) < MIN_TENSORRT:
        return f"needs NVIDIA TensorRT >= {MIN_TENSORRT_TEXT} (tensorrt.plugin); {tensorrt.__version__} is installed"
    return None


def tensorrt_rtx_missing() -> str | None:
    return None if importlib.util.find_spec("tensorrt_rtx") else "needs TensorRT-RTX (pip install tensorrt-rtx-cu13)"
