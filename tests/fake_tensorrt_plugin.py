"""A stand-in for `tensorrt` and `tensorrt.plugin` (TensorRT >= 10.8), for machines without TensorRT.

It checks what TensorRT's plugin decorators check (parameter kinds and annotations, the
(tensors, attributes, outputs, tactic) signatures of autotune and aot_impl, aot_impl's
required return annotation, SymInt32 extra arguments, no two-int cdiv/min), records what is registered, and calls the registered
functions the way TensorRT does: register with the attributes by keyword, autotune and aot_impl
positionally with the attributes in registration order. Shape expressions are
`moe_compile.plugins.tensorrt.symbolic.Sym`, which has exactly TensorRT's operations.
Read from TensorRT's python/packaging/bindings_wheel/tensorrt/plugin/ (_lib.py, _validate.py,
_plugin_class.py, _tensor.py).
"""

from __future__ import annotations

import inspect
import sys
import types
import typing

from moe_compile.plugins.tensorrt.symbolic import SYM_OPS, Sym

ATTRIBUTE_KINDS = (int, float, str, bool)


class TensorDesc:
    def __init__(self, shape_expr=(), dtype=None):
        self.shape_expr, self.dtype = tuple(shape_expr), dtype


class SymInt32:
    def __init__(self, value):
        if not isinstance(value, int | Sym):
            raise TypeError(f"SymInt32 of {type(value)}")
        self.value = value


class SymExprs:
    pass


class SymIntExprs(SymExprs):
    def __init__(self, length: int):
        self.values = [None] * length

    def __setitem__(self, index, value):
        self.values[index] = value

    def __len__(self):
        return len(self.values)


class KernelLaunchParams:
    def __init__(self):
        self.grid_x = self.grid_y = self.grid_z = self.block_x = self.block_y = self.block_z = 1
        self.shared_mem = 0


class AutoTuneCombination:
    def __init__(self, io_types: str, layouts: str = "LINEAR", tactics=None):
        self.io_types = [t.strip() for t in io_types.split(",")]
        self.layouts, self.tactics = layouts, tactics
        if tactics is not None and not all(isinstance(t, int) and t > 0 for t in tactics):
            raise ValueError("custom tactics must be positive ints")


def _no_two_ints(fn):
    def op(a, b):
        if isinstance(a, int) and isinstance(b, int):
            raise ValueError("Both arguments cannot be 'int's")  # noqa: TRY004 (as TensorRT)
        return fn(a, b)
    return op


class PluginDef:
    def __init__(self, register_fn):
        sig = inspect.signature(register_fn)
        self.register_fn, self.tensors, self.attrs = register_fn, [], {}
        for name, param in sig.parameters.items():
            if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or param.annotation is inspect.Parameter.empty:
                raise ValueError(f"argument {name}: positional-or-keyword with an annotation, please")
            if param.annotation is TensorDesc:
                if self.attrs:
                    raise ValueError("TensorDescs and attributes cannot be interspersed")
                self.tensors.append(name)
            elif param.annotation in ATTRIBUTE_KINDS and name not in ("outputs", "stream", "tactic"):
                self.attrs[name] = param.annotation
            else:
                raise ValueError(f"argument {name}: unsupported annotation {param.annotation} or a reserved name")
        outputs = sig.return_annotation
        if typing.get_origin(outputs) is not tuple or not all(a is TensorDesc for a in typing.get_args(outputs)):
            raise ValueError("the return annotation must be Tuple[TensorDesc, ...]")
        self.num_outputs = len(typing.get_args(outputs))
        self.autotune_fn = self.aot_impl_fn = None
        self.autotune_attrs: list[str] = []

    def check_signature(self, fn, trailing: list[str]) -> list[str]:
        names = list(inspect.signature(fn).parameters)
        attrs = [n for n in names if n in self.attrs]
        expected = [*self.tensors, *(n for n in self.attrs if n in attrs), *trailing]
        if names != expected:
            raise ValueError(f"signature {names} does not match the expected {expected}")
        return attrs

    # TensorRT's calls
    def describe(self, descs, attrs: dict):
        outputs = self.register_fn(*descs, **attrs)
        return outputs if isinstance(outputs, tuple) else (outputs,)

    def autotune(self, descs, attrs: dict, outputs):
        return self.autotune_fn(*descs, *(attrs[n] for n in self.autotune_attrs), outputs)

    def aot_impl(self, descs, attrs: dict, outputs, tactic: int):
        name, ptx, params, extra = self.aot_impl_fn(*descs, *(attrs[n] for n in self.attrs), outputs, tactic)
        if not isinstance(name, str | bytes) or not isinstance(ptx, str | bytes):
            raise TypeError("kernel name and PTX must be str or bytes")
        if not isinstance(params, KernelLaunchParams) or not all(isinstance(v, SymInt32) for v in extra.values):
            raise TypeError("launch params must be KernelLaunchParams, extra args SymInt32s")
        return name, ptx, params, extra


def _check_aot_impl_return_annotation(annotation) -> None:
    """TensorRT requires tuple[str | bytes, str | bytes, KernelLaunchParams, a SymExprs]."""
    if annotation is inspect.Parameter.empty:
        raise ValueError("No return annotation found for aot_impl function")
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is not tuple or len(args) != 4:
        raise ValueError(f"Return annotation is {annotation}: expected a 4-tuple")
    for text in args[:2]:
        if not all(a in (str, bytes) for a in (typing.get_args(text) or (text,))):
            raise ValueError(f"Return annotation for the kernel name or PTX is {text}: expected str or bytes")
    if not (issubclass(args[2], KernelLaunchParams) and issubclass(args[3], SymExprs)):
        raise ValueError(f"Return annotation is {annotation}: expected KernelLaunchParams, then a SymExprs")


def make_modules(version: str = "10.13.0") -> tuple[types.ModuleType, types.ModuleType]:
    """Fresh (tensorrt, tensorrt.plugin) stand-ins; `plugin.REGISTRY` maps plugin ids to PluginDefs."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.bfloat16, trt.int32 = "FP32", "FP16", "BF16", "INT32"
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.REGISTRY = {}
    trtp.TensorDesc, trtp.SymInt32, trtp.SymExprs, trtp.SymIntExprs = TensorDesc, SymInt32, SymExprs, SymIntExprs
    trtp.KernelLaunchParams, trtp.AutoTuneCombination = KernelLaunchParams, AutoTuneCombination
    trtp.cdiv, trtp.min = _no_two_ints(SYM_OPS.cdiv), _no_two_ints(SYM_OPS.minimum)
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(shape, dtype)

    def register(plugin_id: str):
        def decorate(fn):
            if plugin_id in trtp.REGISTRY:
                raise ValueError(f"{plugin_id} already has a definition")
            trtp.REGISTRY[plugin_id] = PluginDef(fn)
            return fn
        return decorate

    def autotune(plugin_id: str):
        def decorate(fn):
            plugin = trtp.REGISTRY[plugin_id]
            plugin.autotune_fn, plugin.autotune_attrs = fn, plugin.check_signature(fn, ["outputs"])
            return fn
        return decorate

    def aot_impl(plugin_id: str):
        def decorate(fn):
            plugin = trtp.REGISTRY[plugin_id]
            if plugin.check_signature(fn, ["outputs", "tactic"]) != list(plugin.attrs):
                raise ValueError("TensorRT passes aot_impl every attribute")
            _check_aot_impl_return_annotation(inspect.signature(fn).return_annotation)
            plugin.aot_impl_fn = fn
            return fn
        return decorate

    trtp.register, trtp.autotune, trtp.aot_impl = register, autotune, aot_impl
    trt.plugin = trtp
    return trt, trtp


def install(monkeypatch=None, version: str = "10.13.0") -> types.ModuleType:
    """Put fresh stand-ins in sys.modules (through monkeypatch when given); returns tensorrt.plugin."""
    trt, trtp = make_modules(version)
    for name, module in (("tensorrt", trt), ("tensorrt.plugin", trtp)):
        if monkeypatch is None:
            sys.modules[name] = module
        else:
            monkeypatch.setitem(sys.modules, name, module)
    return trtp
