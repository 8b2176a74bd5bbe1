"""An ONNX file in ONNX Runtime as a runner."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from moe_compile.dtypes import ELEMENT_TYPES
from moe_compile.errors import BackendUnavailable, InvalidInput, NotEnoughMemory, one_line


class OnnxRuntimeRunner:
    """`path` in ONNX Runtime; or, with `graph` (a ModelProto without its weights), that graph
    reading its external data from `path`'s folder (a changed copy of a file's graph that runs
    on the file's own weights, nothing written).

    `prepack=False` turns off ONNX Runtime's prepacking of constant matrix-product weights: the
    session then reads the weights where the file is mapped instead of holding a packed copy of
    each in anonymous memory (about as many bytes again as the file's Gemm and MoE weights),
    at some cost in speed: what a parity check on a large model wants, not a benchmark."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 graph=None, prepack: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("ONNX Runtime is not installed: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        source = str(path)
        on_disk = graph if graph is not None else _graph_on_disk(Path(path))  # read once, for both below
        if on_disk is not None:
            check_gathered_copy_fits(Path(path), on_disk)
            if prepack and graph is None:
                read_ahead_weights(Path(path), on_disk)
        if graph is not None:
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(Path(path).parent))
            source = graph.SerializeToString()
        try:
            self.session = ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise InvalidInput(f"{path}: ONNX Runtime cannot load it ({one_line(exc)})") from None
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.input_names = list(self.input_types)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The decoder's past_key_values.* inputs with no cached positions. Their layout is
        [batch, heads, past, head size] (export/decoder.py); heads and head size are static in the graph."""
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=_NUMPY_TYPES[i.type])
                for i in self.session.get_inputs() if i.name.startswith("past_key_values.")}

    def _typed(self, name: str, value: np.ndarray) -> np.ndarray:
        return value.astype(_NUMPY_TYPES.get(self.input_types[name], value.dtype), copy=False)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A plain run, inputs cast to the graph's types -> every output as ONNX Runtime made it."""
        typed = {name: self._typed(name, value) for name, value in feed.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, typed)))

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: out.astype(np.float32, copy=False) if out.dtype != np.int64 else out
                for name, out in self._run(feed).items()}

    def infer_keeping(self, feed: dict, keep: list[str]) -> dict:
        """Run with the outputs named in `keep` left where the session made them, so a generation
        loop hands the KV cache from one step to the next without a copy; the rest come back as
        numpy.

        On the CPU a plain run does that already: its outputs are numpy arrays over ONNX
        Runtime's own buffers, and numpy inputs of the graph's types are read in place. On a GPU
        the outputs are bound to the device (an IOBinding) and come back as OrtValues there, which
        the next step takes as they are. An IOBinding on the CPU made a decode step slower than a
        plain run, the more so the longer the cache: int4 after 2048 tokens 4.6-5.0 against
        3.8-4.1 ms a step (onnx_speed.py's model, 4 rounds alternating, by hand, 2026-12-06)."""
        if self.session.get_providers()[0] != "CUDAExecutionProvider":
            return self._run(feed)
        return self.infer_bound(feed, keep, "cuda")

    def infer_bound(self, feed: dict, keep: list[str], device: str) -> dict:
        """Run through an IOBinding with every output bound to `device` ("cuda", "cpu"): the outputs
        in `keep` come back as OrtValues there, the rest as numpy; OrtValues in `feed` are bound as
        they are (no copy)."""
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(self._typed(name, value)))
        for name in self.output_names:
            binding.bind_output(name, device)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(self.output_names, binding.get_outputs()))
        return {name: value if name in keep else value.numpy() for name, value in outputs.items()}


def _graph_on_disk(path: Path):
    """The ONNX file's graph without its weights, or None where it cannot be read as one (the
    session then says why)."""
    from moe_compile.onnx_files import read_onnx_graph

    try:
        return read_onnx_graph(path)
    except (InvalidInput, OSError):
        return None


def check_gathered_copy_fits(path: Path, graph) -> None:
    """Refuse, in one line, a session that cannot hold what ONNX Runtime copies when it starts,
    whatever else it does: the few-token experts of an fp32 default export, gathered into halves
    (export/lowering/sorted_experts.py) in anonymous memory. A copy larger than the memory available
    would leave the process to the kernel's out-of-memory handling after ONNX Runtime has read the
    file. `graph`: the graph the session will run, read from `path` or changed from it."""
    from moe_compile.export.lowering.sorted_experts import gathered_halves_bytes
    from moe_compile.validate.memory import available_bytes

    needed = gathered_halves_bytes(graph)
    available = available_bytes()
    if needed and available is not None and needed > available:
        raise NotEnoughMemory(
            f"{path}: ONNX Runtime would copy {needed / 2**20:,.0f} MiB of this export's experts when the session "
            f"starts (the few-token node's halves) and {available / 2**20:,.0f} MiB of memory is available: "
            "export with --moe-prompts node, which reads them from the file, or run where there is more memory")


def read_ahead_weights(path: Path, graph=None, chunk_bytes: int = 16 << 20) -> int:
    """Read the external-data files the ONNX file at `path` names (moe-compile's: `path.data`) once,
    through the page cache, before a session maps them -> the bytes read (0: none read). `graph`:
    the file's graph where the caller has read it already.

    The export writes that file past the page cache (direct_file.py), and ONNX Runtime maps it:
    weights it reads where they are mapped (com.microsoft.MoE's experts) were then faulted in as
    4 KiB pages; read through the page cache first, the file was mapped with 2 MiB pages
    (`FilePmdMapped` in /proc/self/smaps_rollup: 0 against 90 MB) and a decode step of
    onnx_speed.py's fp32 model took 5.47 against 6.00 ms (medians of 4 fresh sessions each, the
    file dropped from the cache before each, by hand, 2026-12-06; docs/export.md). Skipped for
    files larger than half the memory available (reading them would push out what the session
    needs), and for a file the session will refuse anyway (it says why).

    The chunks are read into one anonymous mapping, not into bytes objects: freeing a malloc'd
    block of 16 MiB raises glibc's mmap threshold to that size, and sessions started after it ran
    a 512-token prefill of onnx_speed.py's model in 188-200 ms instead of 156-163 (their
    memory-bound ops, Split, Gather, norms, 2-3x slower under ONNX Runtime's profiler): 12 of 15
    such sessions slow, 0 of 12 with this buffer (a session started right after the read-ahead;
    by hand, 2026-12-06 22:20, AMD host). Sessions started through this runner still land either
    way (7 of 12 slow after the change): something else moves the heap too (docs/export.md)."""
    from moe_compile.onnx_files import external_data_files, read_onnx_graph
    from moe_compile.validate.memory import available_bytes

    try:
        graph = graph if graph is not None else read_onnx_graph(path)
        files = [path.parent / name for name in external_data_files(graph, path)]
        size = sum(file.stat().st_size for file in files)
    except (InvalidInput, OSError):
        return 0
    available = available_bytes()
    if available is not None and size > available // 2:
        return 0
    read = 0
    with mmap.mmap(-1, chunk_bytes) as buffer:  # not malloc's: see the docstring
        for name in files:
            with open(name, "rb", buffering=0) as file:
                while count := file.readinto(buffer):
                    read += count
    return read


_NUMPY_TYPES = {row.ort: np.dtype(row.numpy) for row in ELEMENT_TYPES if row.ort and row.numpy}  # moe_compile/dtypes.py
