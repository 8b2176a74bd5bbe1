"""Does a real TensorRT builder accept the six-stage expansion, and evaluate its shape expressions
as LaunchPlan does with ints? Checked with TensorRT-RTX (its ONNX parser and builder run without a
GPU; docs/tensorrt-rtx.md) and prints one JSON document.

    pip install tensorrt-rtx-cu13
    python benchmarks/tensorrt_rtx_stages.py [--onnx DECODER.onnx]   # exported with --target tensorrt

The model's GroupedMoE nodes are expanded (plugins/tensorrt/expand.py) and parsed with six
IPluginV3 creators registered, one per stage. TensorRT-RTX has no `tensorrt.plugin`, so these are
class-based: their output shapes are stages.py's `StageLayer.launch` built through TensorRT's own
IExprBuilder (plugins/tensorrt/dimension_exprs.py), their output types stages.py's. The build runs
with several optimization profiles; for each profile TensorRT evaluates every plugin's input and
output shapes at the profile's min, opt and max and hands them to `configure_plugin`, which records
them. `mismatches` compares each recorded shape and type with LaunchPlan evaluated with ints for
that T. The plugins are build-only (no enqueue): nothing runs, and RTX targets stop at SM120 (no
Hopper).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

from tensorrt_rtx_probe import collecting_logger, field_value, decoder_model, run_child, unversioned_library_dir

from moe_compile.plugins.tensorrt.stages import (ATTRIBUTE_TYPES, PLUGIN_NAMESPACE, PLUGIN_VERSION, STAGES, StageLayer,
                                                 stage_named)

TARGET = "SM89"
# (max_batch, max_seq) of each optimization profile (builder.profile_shapes): the MoE layers' T
# runs 1 .. max_batch * max_seq, with opt = max_batch (decode steps). Together they reach both
# sides of the route's chunk (16 tokens) and of min(slots, experts).
PROFILES = ((1, 1), (2, 1), (3, 6), (4, 5), (5, 20), (8, 512))
PROFILE_POINTS = ("min", "opt", "max")
_FIELD_TYPES = {int: "INT32", float: "FLOAT32", str: "CHAR"}
_ONNX_ACT = {1: "FLOAT", 10: "HALF", 16: "BF16"}  # ONNX element type -> trt.DataType name


# ---------------------------------------------------------------- child process: the build


def register_stage_creators(trt, configured: list, symbolic: collections.Counter) -> list:
    """One IPluginV3 creator per stage (build-only: no runtime methods). `configured` collects what
    TensorRT hands each plugin's configure_plugin; `symbolic` counts, per stage, the output dims
    that get_output_shapes returned as expressions TensorRT had not folded to constants."""
    import numpy as np

    from moe_compile.plugins.tensorrt.dimension_exprs import dimension, dims_exprs, expr_builder_ops

    floats = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16)
    fixed = {"int32": trt.DataType.INT32, "float32": trt.DataType.FLOAT}

    class StagePlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, stage, node: str, fields: list):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.stage, self.node, self.fields = stage, node, fields
            self.layer = StageLayer.from_node_attributes({name: field_value(trt, data, kind)
                                                          for name, data, kind in fields})
            # (shape, dtype) of every input then output, with T = 1: the dtypes are what matter here
            launch = self.layer.launch(stage, 1, fp32=False)
            self.io_dtypes = [dtype for _, dtype in (*launch.inputs.values(), *launch.outputs.values())]
            self.num_outputs = len(stage.outputs)
            self.plugin_name, self.plugin_version = stage.plugin, PLUGIN_VERSION
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.timing_cache_id = ""

        def get_capability_interface(self, capability):
            return self

        def clone(self):
            return StagePlugin(self.stage, self.node, self.fields)

        def get_output_data_types(self, input_types):
            act = [kind for kind, dtype in zip(input_types, self.io_dtypes, strict=False) if dtype == "act"]
            return [act[0] if dtype == "act" else fixed[dtype] for dtype in self.io_dtypes[len(input_types):]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            first = inputs[self.stage.inputs.index(self.stage.token_input)][0]
            tokens = self.layer.tokens(self.stage, dimension(trt, expr_builder, first))
            launch = self.layer.launch(self.stage, tokens, fp32=False, ops=expr_builder_ops(trt, expr_builder))
            shapes = [dims_exprs(trt, expr_builder, shape) for shape, _ in launch.outputs.values()]
            symbolic[self.stage.plugin] += sum(not dim.is_constant() for dims in shapes for dim in dims)
            return shapes

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc, dtype = in_out[pos].desc, self.io_dtypes[pos]
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if dtype != "act":
                return desc.type == fixed[dtype]
            first_act = self.io_dtypes.index("act")
            return desc.type in floats and (pos == first_act or desc.type == in_out[first_act].desc.type)

        def configure_plugin(self, inputs, outputs):
            configured.append({
                "node": self.node, "stage": self.stage.plugin,
                **{end: [list(getattr(d, end)) for d in (*inputs, *outputs)] for end in PROFILE_POINTS},
                "types": [d.desc.type.name for d in (*inputs, *outputs)]})

        def get_valid_tactics(self):
            return []

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([trt.PluginField(name, data, kind) for name, data, kind in self.fields])

    class StageCreator(trt.IPluginCreatorV3One):
        def __init__(self, stage):
            trt.IPluginCreatorV3One.__init__(self)
            self.stage = stage
            self.name, self.plugin_namespace, self.plugin_version = stage.plugin, PLUGIN_NAMESPACE, PLUGIN_VERSION
            # the parser hands over only the node attributes named here
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(name, np.array([]), getattr(trt.PluginFieldType, _FIELD_TYPES[kind]))
                 for name, kind in ATTRIBUTE_TYPES.items()])

        def create_plugin(self, name, field_collection, phase):
            return StagePlugin(self.stage, name, [(f.name, np.array(f.data).copy(), f.type) for f in field_collection])

    creators = [StageCreator(stage) for stage in STAGES]
    registry = trt.get_plugin_registry()
    if not all(registry.register_creator(creator, PLUGIN_NAMESPACE) for creator in creators):
        raise RuntimeError("TensorRT-RTX refused a stage creator")
    return creators


def build(spec: dict) -> None:
    """Parse spec["model"] (expanded) and build it for spec["target"] with spec["profiles"];
    print the result as one JSON line while TensorRT's objects are alive (see the probe)."""
    import tensorrt_rtx as trt

    logger = collecting_logger(trt)
    configured, symbolic = [], collections.Counter()
    _creators = register_stage_creators(trt, configured, symbolic)  # alive for the whole build
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    result = {"parsed": parser.parse_from_file(spec["model"]),
              "parser_errors": [str(parser.get_error(i)) for i in range(parser.num_errors)]}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    result["plugin_layers"] = [layer.name for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    config = builder.create_builder_config()
    for shapes in spec["profiles"]:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.__members__[spec["target"]], 0)
    engine = builder.build_serialized_network(network, config) if result["parsed"] else None
    result["engine_bytes"] = None if engine is None else len(bytes(engine))
    unique = {json.dumps(record, sort_keys=True) for record in configured}
    result["configured"] = [json.loads(record) for record in sorted(unique)]
    result["symbolic_output_dims"] = dict(symbolic)
    result["log"] = [m for m in logger.messages if "ModelImporter" not in m][:6]
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: model, build, comparison


def expanded_model(exported: Path, out: Path) -> tuple[Path, dict[str, StageLayer], str]:
    """The exported model expanded to stage nodes, saved at `out`; each stage node's StageLayer;
    the activations' TensorRT type name."""
    import onnx
    from onnx import helper

    from moe_compile.plugins.tensorrt.expand import expand_grouped_moe

    model = expand_grouped_moe(onnx.load(exported))
    layers, plugins = {}, {stage.plugin for stage in STAGES}
    for node in model.graph.node:
        if node.domain == PLUGIN_NAMESPACE and node.op_type in plugins:
            values = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ATTRIBUTE_TYPES}
            layers[node.name] = StageLayer.from_node_attributes(
                {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()})
    weights = {init.name: init.data_type for init in model.graph.initializer}
    gate_up = next(stage for stage in STAGES if "w_gate_up" in stage.inputs)
    act = next(_ONNX_ACT[weights[node.input[gate_up.inputs.index("w_gate_up")]]]
               for node in model.graph.node if node.op_type == gate_up.plugin)
    onnx.save(model, out, save_as_external_data=True, all_tensors_to_one_file=True, location=f"{out.name}.data",
              size_threshold=1024)
    return out, layers, act


def profiles(model: Path) -> list[dict]:
    import onnx

    from moe_compile.plugins.tensorrt.builder import graph_inputs, profile_shapes

    inputs = graph_inputs(onnx.load(model, load_external_data=False))
    return [{name: [list(shape.min), list(shape.opt), list(shape.max)]
             for name, shape in profile_shapes(inputs, max_batch, max_seq).items()}
            for max_batch, max_seq in PROFILES]


def profile_points(configured: list[dict], layers: dict[str, StageLayer]):
    """(record, point, T, TensorRT's I/O shapes there, LaunchPlan's StageLaunch for that T as an
    int) for each profile point of each configure_plugin record; T from the stage's token input."""
    for record in configured:
        layer, stage = layers[record["node"]], stage_named(record["stage"])
        for point in PROFILE_POINTS:
            shapes = [tuple(shape) for shape in record[point]]
            tokens = layer.tokens(stage, shapes[stage.inputs.index(stage.token_input)][0])
            yield record, point, tokens, shapes, layer.launch(stage, tokens, fp32=False)


def mismatches(configured: list[dict], layers: dict[str, StageLayer], act: str) -> list[str]:
    """Every I/O shape or type TensorRT configured a stage with that differs from LaunchPlan's."""
    found = []
    for record, point, tokens, shapes, launch in profile_points(configured, layers):
        tensors = (*launch.inputs.values(), *launch.outputs.values())
        expected = [shape for shape, _ in tensors]
        if shapes != expected:
            found.append(f"{record['node']} {point} T={tokens}: TensorRT {shapes}, LaunchPlan {expected}")
        types = [act if dtype == "act" else {"int32": "INT32", "float32": "FLOAT"}[dtype] for _, dtype in tensors]
        if record["types"] != types:
            found.append(f"{record['node']} {point}: TensorRT types {record['types']}, stages.py {types}")
    return found


def build_and_compare(model: Path, layers: dict[str, StageLayer], act: str, work: Path, target: str = TARGET) -> dict:
    """Build the expanded `model` in a child process and compare what TensorRT configured the
    stages with against LaunchPlan: the whole result, JSON-able."""
    result = run_child({"model": str(model), "target": target, "profiles": profiles(model)},
                       unversioned_library_dir(work), script=__file__)
    configured = result.get("configured", [])
    result["tokens_checked"] = sorted({tokens for _, _, tokens, _, _ in profile_points(configured, layers)})
    result["mismatches"] = mismatches(configured, layers, act)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="a decoder exported with --target tensorrt (default: the demo's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        build(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, layers, act = expanded_model(args.onnx or decoder_model(work / "decoder.onnx"), work / "expanded.onnx")
        result = build_and_compare(model, layers, act, work)
    counts = {key: len(result.get(key, [])) for key in ("plugin_layers", "configured")}
    print(json.dumps({**result, **counts, "stage_nodes": len(layers)}, indent=1))


if __name__ == "__main__":
    main()
