"""`moe-compile build`: model.onnx -> engine.plan with TensorRT (10.8 or later, 11), each GroupedMoE
node running as our plugins.

    check the request (file, --out, sizes, precision; no TensorRT needed)
    -> TensorRT and a GPU here? -> load the ONNX -> expand each GroupedMoE node into plugin nodes
    -> register the plugins -> strongly typed network from TensorRT's ONNX parser
    -> two optimization profiles, decode and prefill (batch, sequence, past) -> timing cache in -> build (progress on
    stderr) -> timing cache out -> inspect the engine -> write engine.plan, only now, atomically

Two optimization profiles, one per token bucket, because the grouped-MoE GEMM stages choose their
kernel config (BLOCK_M included) as a TensorRT tactic, and TensorRT times tactics per profile:
"decode" (one new token per sequence, tuned at a full batch) and "prefill" (every shape, tuned at
one sequence of the whole context); the runner takes the first profile that holds its inputs.

A strongly typed network keeps every tensor's type from the ONNX file, so the precision is the
export's (`export --dtype fp16` builds an fp16 engine); `--precision` states what the user
expects and a mismatch is refused before any work. The engine carries the ONNX file's
moe_compile metadata in its name, so `validate --engine` and `bench --engine` check it against
the model as they check an ONNX file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from moe_compile import interrupts
from moe_compile.atomic import atomic_path, check_writable
from moe_compile.dtypes import PRECISIONS, element_type
from moe_compile.errors import BackendUnavailable, InvalidInput, one_line
from moe_compile.export.decoder import BATCH, PAST, SEQUENCE, TOTAL, dynamic_axes
from moe_compile.onnx_files import read_onnx_graph, read_onnx_model

from . import INSTALL, MIN_TENSORRT, MIN_TENSORRT_TEXT, tensorrt_version

# ONNX TensorProto element types of the three precisions (from the one table, moe_compile/dtypes.py)
ONNX_FLOAT_TYPES = {element_type(short=name).onnx: name for name in PRECISIONS}
ENGINE_NAME_PREFIX = "moe_compile:"
DEFAULT_MAX_BATCH, DEFAULT_MAX_SEQ = 8, 1024  # `build`'s defaults (its --help repeats them)


def require_tensorrt(what: str):
    """The `tensorrt` module, or BackendUnavailable (one line: what to install) when it is missing,
    older than 10.8, or there is no GPU for it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but its CUDA libraries are not
        raise BackendUnavailable(f"{what} needs TensorRT, which is not installed: {INSTALL}") from None
    if tensorrt_version(trt) < MIN_TENSORRT:
        raise BackendUnavailable(f"{what} needs TensorRT >= {MIN_TENSORRT_TEXT}, found {trt.__version__}: {INSTALL}")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{what} needs an NVIDIA GPU with CUDA, and none is visible here")
    return trt


# --- the request, checked without TensorRT ---------------------------------------------------


def onnx_precision(model) -> str | None:
    """fp32 | fp16 | bf16: moe-compile's `moe_compile.dtype`, else the one float type of the
    graph's inputs and outputs; None when there is no float I/O or several types."""
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if metadata.get("moe_compile.dtype") in ONNX_FLOAT_TYPES.values():
        return metadata["moe_compile.dtype"]
    found = {ONNX_FLOAT_TYPES[value.type.tensor_type.elem_type]
             for value in [*model.graph.input, *model.graph.output]
             if value.type.tensor_type.elem_type in ONNX_FLOAT_TYPES}
    return found.pop() if len(found) == 1 else None


def check_precision(requested: str | None, found: str | None, path: Path) -> str | None:
    """The engine's precision, which is the ONNX file's; --precision must name it when given."""
    if requested and found and requested != found:
        raise InvalidInput(f"--precision {requested}: {path} holds {found} tensors and a strongly typed engine keeps "
                           f"the ONNX types; export with --dtype {requested}, or build with --precision {found}")
    return found or requested


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int


def axis_ranges(max_batch: int, max_seq: int) -> dict[str, AxisRange]:
    """The range of each decoder axis. `max_seq` is the context: past + new tokens <= max_seq.
    opt (what TensorRT tunes for): a full batch of decode steps with half the context cached,
    since decode steps are most of a generation's time."""
    if max_batch < 1 or max_seq < 1:
        raise InvalidInput(f"--max-batch and --max-seq must be at least 1 (got {max_batch} and {max_seq})")
    past_opt = (max_seq - 1) // 2
    return {BATCH: AxisRange(1, max_batch, max_batch), SEQUENCE: AxisRange(1, 1, max_seq),
            PAST: AxisRange(0, past_opt, max_seq - 1), TOTAL: AxisRange(1, past_opt + 1, max_seq)}


def profile_ranges(max_batch: int, max_seq: int) -> dict[str, dict[str, AxisRange]]:
    """The optimization profiles, in the order the runner tries them: decode (a single new token
    per sequence) first, then prefill, which holds every shape the engine serves."""
    full = axis_ranges(max_batch, max_seq)
    return {"decode": full | {SEQUENCE: AxisRange(1, 1, 1)},
            "prefill": full | {BATCH: AxisRange(1, 1, max_batch), SEQUENCE: AxisRange(1, max_seq, max_seq),
                               PAST: AxisRange(0, 0, max_seq - 1), TOTAL: AxisRange(1, max_seq, max_seq)}}


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def _axis_symbols(inputs) -> dict[str, str]:
    """ONNX dim_param -> axis (BATCH, ...): optimum's names as they are, and the symbols the
    exporter gave the axes of the decoder's own inputs (torch.onnx names them s10, s70, ...)."""
    symbols = {role: role for role in (BATCH, SEQUENCE, PAST, TOTAL)}
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        for axis, role in dynamic_axes(value.name).items():
            if axis < len(dims) and dims[axis].dim_param:
                symbol = dims[axis].dim_param
                if symbols.setdefault(symbol, role) != role:
                    raise InvalidInput(f"input '{value.name}' axis {axis} is '{symbol}', which also names the "
                                       f"{symbols[symbol]} axis: the file's dynamic axes are not the decoder's")
    return symbols


def profile_shapes(inputs, max_batch: int, max_seq: int,
                   ranges: dict[str, AxisRange] | None = None) -> dict[str, ShapeRange]:
    """min/opt/max shapes of every input with a dynamic axis (ONNX ValueInfos of the graph's
    inputs, initializers excluded), for `ranges` (default: axis_ranges). A dynamic axis that is
    not a decoder axis is refused."""
    ranges = ranges or axis_ranges(max_batch, max_seq)
    symbols = _axis_symbols(inputs)
    shapes = {}
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            continue
        per_axis = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                per_axis.append(AxisRange(dim.dim_value, dim.dim_value, dim.dim_value))
            elif dim.dim_param in symbols:
                per_axis.append(ranges[symbols[dim.dim_param]])
            else:
                raise InvalidInput(f"input '{value.name}' axis {axis} is dynamic ('{dim.dim_param or '?'}') but not a "
                                   "batch, sequence or past axis, so it has no range to build for")
        shapes[value.name] = ShapeRange(*(tuple(getattr(r, end) for r in per_axis) for end in ("min", "opt", "max")))
    return shapes


def graph_inputs(model) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


# --- the engine's name: the ONNX file's moe_compile metadata -----------------------------------


def engine_name(onnx_model) -> str:
    """TensorRT stores the network's name in the engine to be read back at run time (at most
    4095 bytes); ours carries the ONNX file's moe_compile metadata."""
    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props if prop.key.startswith("moe_compile.")}
    name = ENGINE_NAME_PREFIX + json.dumps(metadata, sort_keys=True) if metadata else onnx_model.graph.name
    if len(name.encode()) > 4095:
        raise InvalidInput(f"the model's moe_compile metadata ({len(name.encode())} bytes) does not fit in an engine "
                           "name (4095 bytes)")
    return name


def metadata_from_engine_name(name: str) -> dict[str, str]:
    """The moe_compile metadata an engine was built with; empty for an engine we did not build."""
    if not name.startswith(ENGINE_NAME_PREFIX):
        return {}
    try:
        metadata = json.loads(name[len(ENGINE_NAME_PREFIX):])
    except ValueError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


# --- the summary -----------------------------------------------------------------------------


@dataclass
class BuildSummary:
    onnx: str
    engine: str
    precision: str | None
    tensorrt: str
    layers: int
    plugin_layers: dict[str, int]
    device_memory_bytes: int
    engine_bytes: int
    build_seconds: float
    profiles: dict[str, dict[str, dict[str, list[int]]]]  # profile -> input -> min/opt/max
    timing_cache: str | None = None
    grouped_moe_nodes: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def plugin_op_names(onnx_model) -> dict[str, str]:
    """ONNX node name -> `domain::op_type` for every node outside the standard domains: what each
    plugin layer of the engine was made from (TensorRT's ONNX parser names layers after nodes)."""
    return {node.name: f"{node.domain}::{node.op_type}" for node in onnx_model.graph.node
            if node.domain not in ("", "ai.onnx")}


def summarize_layers(info: dict, plugin_ops: dict[str, str]) -> tuple[int, dict[str, int]]:
    """(engine layers, plugin layers per plugin op) from the engine inspector's JSON.

    With detailed profiling verbosity each layer is an object whose LayerType / ParameterType
    says `PluginV3` (or `PluginV2`) for a plugin; with names only, it is its name. A plugin
    layer is counted under the ONNX op it came from when its name is a node's, else under its
    inspector type.
    """
    layers = info.get("Layers", [])
    plugins: Counter[str] = Counter()
    for layer in layers:
        name = layer if isinstance(layer, str) else layer.get("Name", "")
        kinds = [] if isinstance(layer, str) else [layer.get(key, "") for key in ("LayerType", "ParameterType")]
        if name in plugin_ops:
            plugins[plugin_ops[name]] += 1
        elif any(kind.startswith("Plugin") for kind in kinds):
            plugins[next(kind for kind in kinds if kind.startswith("Plugin"))] += 1
    return len(layers), dict(sorted(plugins.items()))


# --- the build -------------------------------------------------------------------------------


def build_engine(onnx_path: str | Path, out: str | Path, *, precision: str | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_seq: int = DEFAULT_MAX_SEQ,
                 timing_cache: str | Path | None = None, progress: bool = True) -> BuildSummary:
    onnx_path, out = Path(onnx_path), Path(out)
    header = read_onnx_graph(onnx_path)
    found = check_precision(precision, onnx_precision(header), onnx_path)
    inputs = graph_inputs(header)
    shapes = {name: profile_shapes(inputs, max_batch, max_seq, ranges)
              for name, ranges in profile_ranges(max_batch, max_seq).items()}
    check_writable(out)
    if timing_cache is not None:
        if Path(timing_cache).is_dir():
            raise InvalidInput(f"--timing-cache {timing_cache} is a folder; give a file name")
        check_writable(timing_cache)
    trt = require_tensorrt("build")
    started = time.perf_counter()
    model = _load_expanded(onnx_path, max_tokens=max_batch * max_seq)
    from moe_compile.plugins.tensorrt.plugin import register_plugins

    register_plugins()
    log = error_logger(trt)
    with _staged_onnx(model, out) as staged:
        builder, network, _parser = _parse(trt, log, staged, onnx_path)  # the parser owns the weights: keep it
        network.name = engine_name(model)
        config = _config(trt, builder, shapes, timing_cache)
        with _progress(trt, config, enabled=progress), interrupts.deferred():
            serialized = builder.build_serialized_network(network, config)
        interrupts.raise_if_received()
    if serialized is None:
        raise InvalidInput(f"TensorRT could not build {onnx_path}: {log.last_error() or 'no error was logged'}")
    engine_bytes = bytes(serialized)
    summary = _inspect(trt, log, engine_bytes, model, onnx_path, out, found, shapes)
    summary.build_seconds = round(time.perf_counter() - started, 1)
    summary.grouped_moe_nodes = sum(1 for node in header.graph.node if node.op_type == "GroupedMoE")
    with atomic_path(out) as tmp:
        tmp.write_bytes(engine_bytes)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        summary.timing_cache = str(timing_cache)
    return summary


def _load_expanded(onnx_path: Path, max_tokens: int):
    """The ONNX model with its weights, each GroupedMoE node replaced by the plugin nodes."""
    from moe_compile.plugins.tensorrt.expand import expand_grouped_moe

    return expand_grouped_moe(read_onnx_model(onnx_path), max_tokens=max_tokens)


@contextlib.contextmanager
def _staged_onnx(model, out: Path):
    """The expanded model as a file for the parser (which reads external weights relative to
    it), in a folder beside --out that is removed afterwards."""
    import onnx

    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.onnx.", dir=out.parent))
    try:
        path = folder / "model.onnx"
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def error_logger(trt):
    """A TensorRT logger that keeps errors (for our one line) and prints nothing else."""
    class ErrorLog(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(" ".join(str(message).split()))

        def last_error(self) -> str | None:
            return self.errors[-1] if self.errors else None

    return ErrorLog()


def _parse(trt, log, staged: Path, onnx_path: Path):
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    prefer_aot = getattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS", None)
    if prefer_aot is not None:  # TensorRT >= 10.12: the plugins' compiled kernels, no Python at run time
        flags |= 1 << int(prefer_aot)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(staged)):
        error = parser.get_error(0) if parser.num_errors else None
        node = error.node_name() if error is not None and hasattr(error, "node_name") else ""
        where = f" at node '{node}'" if node else ""
        what = error.desc() if error is not None else (log.last_error() or "no error was reported")
        raise InvalidInput(f"TensorRT's ONNX parser cannot read {onnx_path}{where}: {one_line(Exception(what))}")
    return builder, network, parser


def _config(trt, builder, shapes: dict[str, dict[str, ShapeRange]], timing_cache: str | Path | None):
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then describes each layer
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # fp32 means fp32, as in our kernels (no TF32 in matrix products)
        config.clear_flag(tf32)
    for one_profile in shapes.values():  # profile index i: the i-th of profile_ranges
        if one_profile:
            profile = builder.create_optimization_profile()
            for name, shape in one_profile.items():
                profile.set_shape(name, shape.min, shape.opt, shape.max)
            config.add_optimization_profile(profile)
    cached = Path(timing_cache).read_bytes() if timing_cache is not None and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cached)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise InvalidInput(f"--timing-cache {timing_cache}: not a timing cache of this TensorRT and GPU "
                           "(delete it to start a new one)")
    return config


@contextlib.contextmanager
def _progress(trt, config, enabled: bool):
    """TensorRT's build phases as rich progress bars on stderr (a terminal only)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=not (enabled and console.is_terminal)) as bars:
        class RichProgress(trt.IProgressMonitor):
            """TensorRT calls these from inside the build: they must never raise. Returning False
            from step_complete cancels the build (after Ctrl-C)."""

            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)
                self.tasks: dict[str, int] = {}

            def phase_start(self, phase_name, parent_phase, num_steps) -> None:
                with contextlib.suppress(Exception):
                    indent = "  " if parent_phase else ""
                    self.tasks[phase_name] = bars.add_task(f"{indent}{phase_name}", total=max(num_steps, 1))

            def step_complete(self, phase_name, step) -> bool:
                with contextlib.suppress(Exception):
                    bars.update(self.tasks[phase_name], completed=step + 1)
                return interrupts.received() is None

            def phase_finish(self, phase_name) -> None:
                with contextlib.suppress(Exception):
                    bars.remove_task(self.tasks.pop(phase_name))

        monitor = RichProgress()  # referenced here for as long as the build can call it
        config.progress_monitor = monitor
        yield


def _inspect(trt, log, engine_bytes: bytes, model, onnx_path: Path, out: Path, precision: str | None,
             shapes: dict[str, dict[str, ShapeRange]]) -> BuildSummary:
    engine = trt.Runtime(log).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise InvalidInput(f"TensorRT built {onnx_path} but cannot load the engine: {log.last_error()}")
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers, plugins = summarize_layers(info, plugin_op_names(model))
    return BuildSummary(
        onnx=str(onnx_path), engine=str(out), precision=precision, tensorrt=trt.__version__, layers=layers,
        plugin_layers=plugins, device_memory_bytes=int(engine.device_memory_size_v2), engine_bytes=len(engine_bytes),
        build_seconds=0.0, profiles={profile: {name: {"min": list(s.min), "opt": list(s.opt), "max": list(s.max)}
                                               for name, s in inputs.items()} for profile, inputs in shapes.items()})
