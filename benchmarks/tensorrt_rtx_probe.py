"""Can TensorRT-RTX be moe-compile's second TensorRT flavour (issue #7, item 4b)? Probes what its
PyPI wheels do on this machine (no GPU needed) and prints one JSON document.

    pip install tensorrt-rtx-cu13        # beside moe-compile; bindings + libs wheels (-cu12: CUDA 12)
    python benchmarks/tensorrt_rtx_probe.py [--onnx DECODER.onnx]

Probes (docs/tensorrt-rtx.md reads their results):
  python_api      `tensorrt_rtx.plugin` (TensorRT's decorator plugin API) and the binding classes
                  its ahead-of-time path needs
  plain_engine    a MatMul + Relu model (fp16) built for every compute capability the builder
                  lists, for SM90 (Hopper, not listed), for CURRENT (this machine's GPU) and with
                  none set
  plugin_engine   our GroupedMoE node, parsed by TensorRT-RTX's ONNX parser and built with a Python
                  IPluginV3 creator registered for moe_compile::GroupedMoE: a one-node model
                  (export/op_model.py) with the wheels as installed, then with the unversioned
                  libtensorrt_rtx.so that the parser opens for plugin nodes, for every target; then
                  the demo decoder exported for the tensorrt target (or --onnx)
  engine          what each built plugin engine holds, and whether this machine can load it

Every build runs in a child process (this file with --child), because a failure inside the ONNX
parser ends the process (std::terminate) instead of raising: the parent records the exit status
and the end of stderr of a child that dies.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from moe_compile.atomic import atomic_path

PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION = "GroupedMoE", "moe_compile", "1"
# The ONNX parser hands the creator only the attributes its field_names name, each converted by
# its ONNX type (INT -> INT32, FLOAT -> FLOAT32, STRING -> CHAR) whatever type is declared there;
# these are the types declared, to match.
FIELD_TYPES = {"int": "INT32", "bool": "INT32", "float": "FLOAT32", "str": "CHAR"}
# Tactics the plugin offers: a CPU build cannot time them, the engine shows which one it kept.
TACTICS = (1, 2)
# Optimization-profile ranges (min, opt, max) per kind of dynamic dimension.
RANGES = {"batch": (1, 1, 2), "tokens": (1, 8, 64), "past": (0, 8, 64), "total": (1, 16, 128)}
DECODER_TARGETS = ("SM89", "SM120")  # Ada and Blackwell RTX: the decoder build takes seconds
OP_SHAPE = {"experts": 8, "hidden": 64, "intermediate": 32}


# ---------------------------------------------------------------- child process: one build


def collecting_logger(trt):
    class CollectingLogger(trt.ILogger):
        """Keeps TensorRT's warnings and errors, word for word, for the report; writes them to
        stderr too, where the parent finds them if the process dies."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(f"{severity.name}: {msg}")
                print(self.messages[-1], file=sys.stderr, flush=True)

    return CollectingLogger()


def _register_grouped_moe_creator(trt, field_types: dict[str, str], received: dict, calls: collections.Counter):
    """A Python IPluginV3 creator for moe_compile::GroupedMoE, enough for the builder: output
    shape and type, formats, tactics, fields. It has no runtime methods (enqueue, set_tactic,
    on_shape_change, attach_to_context): a build never calls them, and an engine built with it can
    only run in a process that registers a creator with a working enqueue."""
    import numpy as np

    floats = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.BF16)

    class GroupedMoEPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        def __init__(self, fields: list):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = 1
            self.plugin_name, self.plugin_namespace, self.plugin_version = PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
            self.timing_cache_id = ""
            self.fields = fields  # [(name, numpy data, PluginFieldType)]

        def get_capability_interface(self, capability):
            return self

        def clone(self):
            calls["clone"] += 1
            return GroupedMoEPlugin(self.fields)

        def get_output_data_types(self, input_types):
            calls["get_output_data_types"] += 1
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            calls["get_output_shapes"] += 1
            return [trt.DimsExprs(inputs[0])]  # out [T, H] = hidden [T, H]

        def supports_format_combination(self, pos, in_out, num_inputs):
            desc = in_out[pos].desc
            return desc.format == trt.TensorFormat.LINEAR and desc.type in floats and desc.type == in_out[0].desc.type

        def configure_plugin(self, inputs, outputs):
            calls["configure_plugin"] += 1

        def get_valid_tactics(self):
            calls["get_valid_tactics"] += 1
            return list(TACTICS)

        def get_fields_to_serialize(self):
            calls["get_fields_to_serialize"] += 1
            return trt.PluginFieldCollection([trt.PluginField(name, data, kind) for name, data, kind in self.fields])

    class GroupedMoECreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
            # The parser passes only the attributes named here (see FIELD_TYPES).
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(name, np.array([]), getattr(trt.PluginFieldType, kind)) for name, kind in field_types.items()])

        def create_plugin(self, name, field_collection, phase):
            calls["create_plugin"] += 1
            fields = [(f.name, np.array(f.data).copy(), f.type) for f in field_collection]
            received[name] = {f_name: field_value(trt, data, kind) for f_name, data, kind in fields}  # by node name
            return GroupedMoEPlugin(fields)

    creator = GroupedMoECreator()
    registered = trt.get_plugin_registry().register_creator(creator, PLUGIN_NAMESPACE)
    return creator, registered


def field_value(trt, data, kind):
    """A plugin field's data as Python: CHAR as its NUL-terminated text, one number as a scalar."""
    if kind == trt.PluginFieldType.CHAR:
        return bytes(data.astype("uint8")).split(b"\0")[0].decode()
    return data.item() if data.size == 1 else data.tolist()


def _engine_contents(data: bytes, field_names) -> dict:
    """What the serialized engine carries, read from its bytes (its header is text)."""
    contents = {
        "bytes": len(data),
        "accelerators": sorted({a.decode().strip() for a in re.findall(rb"accelerators=\{([^}]*)\}", data)}),
        "plugin_layers": data.count(b"custom_layer={"),
    }
    if field_names:
        contents["holds_plugin_name_and_namespace"] = PLUGIN_NAME.encode() in data and PLUGIN_NAMESPACE.encode() in data
        contents["holds_every_field_name"] = all(name.encode() in data for name in field_names)
        contents["tactic_ids"] = sorted({t.decode() for t in re.findall(rb'tactic_id="([^"]*)"', data)})[:2]
    return contents


def build(spec: dict) -> None:
    """Parse spec["model"], build it for spec["target"] (and write it to spec["engine_out"], if
    given); with spec["fields"], register our creator first. Prints the result as one JSON line
    while TensorRT's objects are still alive: after a failed build with a Python plugin, the
    process aborts when they are freed."""
    import tensorrt_rtx as trt

    logger = collecting_logger(trt)
    received, calls = {}, collections.Counter()
    result = {}
    if spec.get("fields") is not None:
        # The creator stays referenced by this frame for the whole build.
        _creator, result["creator_registered"] = _register_grouped_moe_creator(trt, spec["fields"], received, calls)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    result["parsed"] = parser.parse_from_file(spec["model"])
    result["parser_errors"] = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layer_types = collections.Counter(network.get_layer(i).type.name for i in range(network.num_layers))
    result["layers"], result["plugin_v3_layers"] = network.num_layers, layer_types.get("PLUGIN_V3", 0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in spec["profile"].items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    target = spec["target"]
    if target is not None:
        members = trt.ComputeCapability.__members__
        capability = members[target] if target in members else trt.ComputeCapability(int(target.removeprefix("SM")))
        config.num_compute_capabilities = 1
        config.set_compute_capability(capability, 0)
    engine = builder.build_serialized_network(network, config) if result["parsed"] else None
    result["built"] = engine is not None
    if engine is not None:
        data = bytes(engine)
        result["engine"] = _engine_contents(data, spec.get("fields") or {})
        if spec.get("engine_out"):
            with atomic_path(spec["engine_out"]) as tmp:
                tmp.write_bytes(data)
        before = len(logger.messages)
        loaded = trt.Runtime(logger).deserialize_cuda_engine(data)
        result["engine"]["loads_here"] = loaded is not None
        result["engine"]["load_errors"] = logger.messages[before:before + 1]
        del logger.messages[before:]
    if spec.get("fields") is not None:
        result["fields_received"] = received
        result["builder_callbacks"] = dict(sorted(calls.items()))
    result["log"] = [m for m in logger.messages if "ModelImporter" not in m][:4]
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: models, children, report


def run_child(spec: dict, library_dir: Path | None = None, script: str = __file__) -> dict:
    """`script --child SPEC` in a fresh process (its last stdout line is its JSON result)."""
    env = dict(os.environ)
    if library_dir is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(library_dir), env.get("LD_LIBRARY_PATH")) if p)
    done = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True, env=env,
                          check=False)
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if done.returncode != 0:
        result.update(returncode=done.returncode, stderr_tail=done.stderr.strip().splitlines()[-3:])
    return result


def libs_wheel_folder() -> Path:
    import tensorrt_rtx_libs

    return Path(tensorrt_rtx_libs.__file__).parent


def unversioned_library_dir(root: Path) -> Path:
    """A folder with libtensorrt_rtx.so -> the libs wheel's libtensorrt_rtx.so.1 (the wheel ships
    only the versioned name; the ONNX parser opens the unversioned one when it imports a plugin)."""
    folder = root / "lib"
    folder.mkdir()
    (folder / "libtensorrt_rtx.so").symlink_to(libs_wheel_folder() / "libtensorrt_rtx.so.1")
    return folder


def python_api() -> dict:
    import tensorrt_rtx as trt

    try:
        import tensorrt_rtx.plugin
        plugin_module = "imported"
    except ImportError as error:
        plugin_module = f"{type(error).__name__}: {error}"
    network = trt.Builder(collecting_logger(trt)).create_network(0)
    classes = ("IPluginV3", "IPluginV3OneBuild", "IPluginCreatorV3One", "IPluginV3QuickBuild",
               "IPluginV3QuickAOTBuild", "QuickPluginCreationRequest")
    return {"import tensorrt_rtx.plugin": plugin_module,
            "classes": {name: hasattr(trt, name) for name in classes},
            "INetworkDefinition.add_plugin_v3": hasattr(network, "add_plugin_v3"),
            "compute_capabilities": [name for name in trt.ComputeCapability.__members__ if name.startswith("SM")]}


def node_attributes(model: Path) -> dict:
    """Each GroupedMoE node's attributes as the creator should receive them (not the lookup ones)."""
    import onnx

    from moe_compile.export.schema import OP_TYPE, PLUGIN_ATTRIBUTES

    def value(attribute):
        value = onnx.helper.get_attribute_value(attribute)
        return value.decode() if isinstance(value, bytes) else value

    return {node.name: {a.name: value(a) for a in node.attribute if a.name not in PLUGIN_ATTRIBUTES}
            for node in onnx.load(model, load_external_data=False).graph.node if node.op_type == OP_TYPE}


def grouped_moe_fields() -> dict[str, str]:
    from moe_compile.grouped_moe_op import GroupedMoEAttributes

    return {f.name: FIELD_TYPES[f.type] for f in dataclasses.fields(GroupedMoEAttributes)}


def op_model(path: Path, attrs) -> Path:
    """One GroupedMoE node as the tensorrt target writes it (fp16, T dynamic)."""
    import onnx
    import torch

    from moe_compile.export.op_model import grouped_moe_onnx

    experts, hidden, inter = OP_SHAPE["experts"], OP_SHAPE["hidden"], OP_SHAPE["intermediate"]
    generator = torch.Generator().manual_seed(0)
    weights = {"w_gate_up": torch.randn(experts, 2 * inter, hidden, generator=generator).half() * 0.1,
               "w_down": torch.randn(experts, hidden, inter, generator=generator).half() * 0.1}
    model = grouped_moe_onnx("tensorrt", attrs, (1, hidden), weights, torch.float16)
    # The node's schema has no type inference, so the graph output is untyped, which TensorRT's
    # parser refuses; out [T, H] is typed like hidden [T, H].
    model.graph.output[0].type.CopyFrom(model.graph.input[0].type)
    onnx.save(model, path)
    return path


def plain_model(path: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((64, 64), 0.01, np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["T", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["T", 64])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def decoder_model(path: Path) -> Path:
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx

    export_onnx(load_moe_model("demo"), path, target="tensorrt")
    return path


def profile(model: Path) -> dict:
    """min/opt/max shapes for every input: the decoder's inputs by name (export/decoder.py), any
    other input's dynamic first dimension as tokens."""
    import onnx

    graph = onnx.load(model, load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if value.name.startswith("past_key_values."):
            roles = ["batch", None, "past", None]
        elif value.name == "attention_mask":
            roles = ["batch", "total"]
        elif value.name in ("input_ids", "position_ids"):
            roles = ["batch", "tokens"]
        else:
            roles = ["tokens"] + [None] * (len(dims) - 1)
        shapes[value.name] = [[dim if dim is not None else RANGES[role][i] for dim, role in zip(dims, roles)]
                              for i in range(3)]
    return shapes


def versions() -> dict:
    names = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                   if d.metadata["Name"].lower().replace("_", "-").startswith(("tensorrt", "onnx", "numpy", "torch")))
    return {"python": platform.python_version(), "platform": platform.platform(),
            **{name: importlib.metadata.version(name) for name in names}}


def probe(decoder: Path | None) -> dict:
    try:
        import tensorrt_rtx
    except ImportError as error:
        raise SystemExit(f"tensorrt_rtx is not importable ({error}): pip install tensorrt-rtx-cu13") from error
    from moe_compile.grouped_moe_op import GroupedMoEAttributes

    report = {"command": " ".join(["python", *sys.argv]), "versions": versions(),
              "tensorrt_rtx.__version__": tensorrt_rtx.__version__, "python_api": python_api()}
    targets = [*report["python_api"]["compute_capabilities"], "SM90", "CURRENT", None]
    fields = grouped_moe_fields()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain, one_node = plain_model(root / "plain.onnx"), op_model(root / "grouped_moe.onnx",
                                                                 GroupedMoEAttributes(top_k=2, normalize_topk=True))
        decoder = decoder or decoder_model(root / "decoder.onnx")
        library_dir = unversioned_library_dir(root)
        report["libs_wheel_files"] = sorted(p.name for p in libs_wheel_folder().iterdir() if ".so" in p.name)
        report["plain_engine"] = {str(t): run_child({"model": str(plain), "target": t, "profile": profile(plain)})
                                  for t in targets}
        node = {"model": str(one_node), "profile": profile(one_node), "fields": fields}
        plugin = {"one_node_as_installed": run_child({**node, "target": "SM89"}),
                  "one_node": {str(t): run_child({**node, "target": t}, library_dir) for t in targets},
                  "decoder": {t: run_child({"model": str(decoder), "profile": profile(decoder), "fields": fields,
                                            "target": t}, library_dir) for t in DECODER_TARGETS}}
        expected = {"one_node": node_attributes(one_node), "decoder": node_attributes(decoder)}
    for model in ("one_node", "decoder"):
        for result in plugin[model].values():
            received = result.pop("fields_received", None)
            if received is not None:
                result["fields_match_node_attributes"] = received == expected[model]
                result["fields_of_first_node"] = next(iter(received.values()), None)
    report["plugin_engine"] = plugin
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="a decoder exported with --target tensorrt (default: export the demo)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        build(json.loads(args.child))
        return
    print(json.dumps(probe(args.onnx), indent=1))


if __name__ == "__main__":
    main()
