"""The `tensorrt` marker asks for what its tests really need: NVIDIA TensorRT (module `tensorrt`,
>= 10.8); TensorRT-RTX, which CI installs, does not satisfy it and has its own marker."""

import importlib.util
import sys
import types

import marker_requirements


def _only(monkeypatch, *present):
    """find_spec as on a machine where, of tensorrt and tensorrt_rtx, only `present` are installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("tensorrt", "tensorrt_rtx"):
            return object() if name in present else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_tensorrt_rtx_alone_does_not_satisfy_the_tensorrt_marker(monkeypatch):
    _only(monkeypatch, "tensorrt_rtx")
    reason = marker_requirements.tensorrt_missing()
    assert "module tensorrt" in reason and "TensorRT-RTX is, but it is not TensorRT" in reason
    assert marker_requirements.tensorrt_rtx_missing() is None


def test_an_old_tensorrt_does_not_satisfy_it(monkeypatch):
    _only(monkeypatch, "tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert "10.3.0 is installed" in marker_requirements.tensorrt_missing()
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0"))
    assert marker_requirements.tensorrt_missing() is None
