"""Register the six grouped-MoE stages as TensorRT AOT Python plugins (`tensorrt.plugin`, TRT >= 10.8).

For each stage of stages.py, under `moe_compile::<plugin>` version 1:

- `trtp.register`: output shapes (expressions in the stage's T) and dtypes from the inputs and
  the node's attributes;
- `trtp.autotune`: fp32, fp16 and bf16 activations (every other tensor has one dtype) and, for
  the two GEMM stages, one tactic per kernel config with the node's BLOCK_M;
- `trtp.aot_impl`: the stage's Triton kernel compiled to PTX for the building GPU, with its grid
  and int32 arguments as expressions TensorRT evaluates at run time (aot_kernel.py).

There is no `trtp.impl`: the engine holds the PTX and runs without Python. TensorRT's
registration functions read the parameter names of what they decorate, and those differ per
stage (its input tensors), so the functions get an explicit `__signature__`; TensorRT calls
them with the inputs and then every attribute, in the order of stages.ATTRIBUTE_TYPES.
"""

from __future__ import annotations

import functools
import inspect

from moe_compile.dtypes import PRECISIONS, element_type
from moe_compile.errors import BackendUnavailable

from . import INSTALL, MIN_TENSORRT, MIN_TENSORRT_TEXT, tensorrt_version
from .aot_kernel import current_arch, device_name, gemm_tactics, stage_kernel
from .stages import ATTRIBUTE_TYPES, GEMM_STAGES, PLUGIN_NAMESPACE, STAGES, Stage, StageLayer
from .symbolic import lifted_ops



def register_plugins() -> None:
    """Register the six plugins with TensorRT (once per process; later calls do nothing)."""
    _register_all(_plugin_module())


def _plugin_module():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise BackendUnavailable(f"TensorRT's Python plugin API (tensorrt.plugin) is missing; it needs "
                                 f"TensorRT >= {MIN_TENSORRT_TEXT}: {INSTALL}") from exc
    if tensorrt_version(trt) < MIN_TENSORRT or not hasattr(trtp, "aot_impl"):
        raise BackendUnavailable(f"TensorRT {trt.__version__} has no AOT Python plugins: {INSTALL}")
    return trtp


@functools.cache
def _register_all(trtp) -> None:
    for stage in STAGES:
        _register_stage(trtp, stage)


def _parameters(names, annotation) -> list[inspect.Parameter]:
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation) for name in names]


def _attribute_parameters() -> list[inspect.Parameter]:
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind)
            for name, kind in ATTRIBUTE_TYPES.items()]


def _split(stage: Stage, args: tuple) -> tuple[tuple, StageLayer]:
    """A positional call (input descriptors, then every attribute in ATTRIBUTE_TYPES order)."""
    descs, values = args[:len(stage.inputs)], args[len(stage.inputs):]
    return descs, StageLayer.from_node_attributes(dict(zip(ATTRIBUTE_TYPES, values, strict=True)))


def _act_dtype(stage: Stage, descs, layer: StageLayer):
    """TensorRT's dtype of the activations, from the first input that has it; None if none has."""
    inputs = layer.launch(stage, 1, fp32=False).inputs.values()
    return next((desc.dtype for desc, (_, dtype) in zip(descs, inputs, strict=True) if dtype == "act"), None)


def _act_name(stage: Stage, descs, layer: StageLayer) -> str:
    """The activations' dtype name ("float32", ...); a stage without activations has no use for it."""
    import tensorrt as trt

    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    dtype = _act_dtype(stage, descs, layer)
    return "float32" if dtype is None else names[dtype]


def _tokens(stage: Stage, descs, layer: StageLayer):
    """The stage's T, a TensorRT shape expression."""
    return layer.tokens(stage, descs[stage.inputs.index(stage.token_input)].shape_expr[0])


def _register_stage(trtp, stage: Stage) -> None:
    import tensorrt as trt

    plugin_id = f"{PLUGIN_NAMESPACE}::{stage.plugin}"
    fixed_types = {"int32": trt.int32, "float32": trt.float32}

    def describe(*descs, **attributes):  # TensorRT passes the attributes by name here
        layer = StageLayer.from_node_attributes(attributes)
        act = _act_dtype(stage, descs, layer)
        launch = layer.launch(stage, _tokens(stage, descs, layer), fp32=False, ops=lifted_ops(trtp.cdiv, trtp.min))
        return tuple(trtp.from_shape_expr(shape, dtype=act if dtype == "act" else fixed_types[dtype])
                     for shape, dtype in launch.outputs.values())

    outputs_type = tuple[(trtp.TensorDesc,) * len(stage.outputs)]
    describe.__signature__ = inspect.Signature(
        _parameters(stage.inputs, trtp.TensorDesc) + _attribute_parameters(), return_annotation=outputs_type)
    trtp.register(plugin_id)(describe)

    def autotune(*args):
        _, layer = _split(stage, args[:-1])
        return autotune_combinations(trtp, stage, layer)

    autotune.__signature__ = inspect.Signature(
        _parameters(stage.inputs, trtp.TensorDesc) + _attribute_parameters() + _parameters(["outputs"], outputs_type),
        return_annotation=list[trtp.AutoTuneCombination])
    trtp.autotune(plugin_id)(autotune)

    def aot_impl(*args):
        descs, layer = _split(stage, args[:-2])
        kernel = stage_kernel(stage, layer, _tokens(stage, descs, layer), _act_name(stage, descs, layer),
                              tactic=args[-1], ops=lifted_ops(trtp.cdiv, trtp.min), arch=current_arch(),
                              device_name=device_name())
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = kernel.grid
        params.block_x, params.shared_mem = kernel.block, kernel.shared_mem
        extra = trtp.SymIntExprs(len(kernel.extra_args))
        for index, value in enumerate(kernel.extra_args):
            extra[index] = trtp.SymInt32(value)
        return kernel.kernel_name, kernel.ptx, params, extra

    # TensorRT refuses an aot_impl without this return annotation (tensorrt/plugin/_validate.py)
    aot_impl.__signature__ = inspect.Signature(
        _parameters(stage.inputs, trtp.TensorDesc) + _attribute_parameters()
        + _parameters(["outputs"], outputs_type) + _parameters(["tactic"], int),
        return_annotation=tuple[str, str, trtp.KernelLaunchParams, trtp.SymIntExprs])
    trtp.aot_impl(plugin_id)(aot_impl)


def autotune_combinations(trtp, stage: Stage, layer: StageLayer) -> list:
    """One combination over every I/O position: the activations fp32|fp16|bf16 together, every
    other tensor its one dtype; the GEMM stages with their config tactics."""
    launch = layer.launch(stage, 1, fp32=False)
    act = "|".join(element_type(short=name).tensorrt_plugin for name in PRECISIONS)
    types = [act if dtype == "act" else element_type(torch=dtype).tensorrt_plugin
             for _, dtype in (*launch.inputs.values(), *launch.outputs.values())]
    tactics = list(range(1, len(gemm_tactics(layer, device_name())) + 1)) if stage.launch in GEMM_STAGES else None
    return [trtp.AutoTuneCombination(", ".join(types), "LINEAR", tactics)]
