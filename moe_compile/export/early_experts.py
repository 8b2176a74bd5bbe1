"""A streamed export's MoE weights, written while its graph is still being traced.

Tracing (torch.export, then torch.onnx: 7-10 s for two to four Qwen3-30B-A3B-shaped layers) is
Python on one core; writing the weights (reading, converting, the disk) is most of the rest. The
MoE layers' expert tensors are most of the bytes (2.4 of a Qwen3-30B-A3B layer's 2.5 GB at fp32),
and what the export does to them is known before the graph is: they are inputs of the layer's
GroupedMoE call, cast to the export dtype and, where the layer becomes a com.microsoft.MoE node,
in that node's expert layout (`lowering.expert_field_layouts`, from the same `choose_lowering`
the translation runs). So `EarlyMoEWrites` writes them to the external data file while the main
thread traces; `write_external_data` then points every initializer whose recipe is one written
early at those bytes and writes the rest after them, while the early writer may still be at work
(their offsets are planned from their sizes before either starts). With `export --quantize`, a
layer that becomes QMoE has its experts written as the quantize pass will hold them: packed
values and scales (export/quantized_weights.py, both from one read), so that the slowest part of
a quantized export, quantizing the experts, runs while the graph is traced.

Past `CHILD_PROCESS_BYTES` the writing runs in a child process (`python -m
moe_compile.export.early_experts`, the job and its result pickled over pipes). On a thread of
this process it would share the interpreter lock with the trace, which holds it almost always:
every torch call the writer makes waits for the lock's next hand-over, and reading one
Qwen3-30B-A3B-shaped layer took 8 s during the trace against 0.9 s after it (2026-12-05). Smaller
models (the tests' tiny ones, the demos) use a thread: a process would cost more to start.

Were the graph to use one of them differently (an initializer with another permutation or
layout), nothing would point at its bytes; the file is then written again from the start
(streamed_weights.py), so an export never carries unused bytes. tests/export/test_streamed_export.py
checks that no architecture and target needs that.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import onnx_ir as ir
import torch

from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.rewrite import StaticTopKMoE
from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.weight_sources import (MOE_FIELDS, LayerWeights, WeightRecipe, WeightSources,
                                                  reader_without_layer)
from moe_compile.direct_file import DirectFile
from moe_compile.errors import InvalidInput

from moe_compile.quantization.scheme import QuantScheme

from .lowering import choose_lowering, expert_field_layouts
from .quantized_weights import QuantizedTensor, quantized_pair
from .streamed_weights import (ALIGNMENT, INLINE_LIMIT, SlicedTensor, StreamedTensor, append_tensors, external_tensor,
                               recipe_key)

CHILD_PROCESS_BYTES = 256 << 20  # MoE tensors of at least this many bytes are written by a child process
READ_THREAD = "export-moe-reads"  # the thread that reads and converts them
# the ExpertWeights fields that reach the graph as they are read (cast, laid out): not the score
# bias, which the optimizer folds into constants of its own
_EARLY_FIELDS = ("router_weight", "router_bias", "gate_up", "down", "gate_up_bias", "down_bias")
_ROUTER_FIELDS = ("router_weight", "router_bias")
_QUANTIZED_FIELDS = ("gate_up", "down")  # what export --quantize makes QMoE's packed experts


def _moe_tensors(skeleton: torch.nn.Module, moe_model: MoEModel, target: str,
                 quantize: QuantScheme | None = None, expert_halves: bool = False) -> list[tuple[str, str, SlicedTensor]]:
    """(module path, ExpertWeights field, tensor) of every MoE-layer tensor the graph is expected
    to hold, layer by layer: each parameter as read, or for `quantize`, a QMoE layer's experts as
    their packed values and scales."""
    sources = WeightSources(skeleton, moe_model)
    found = []
    for path, module in skeleton.named_modules():
        if not isinstance(module, StaticTopKMoE):
            continue
        lowering = choose_lowering(target, module.attributes, has_score_bias=module.score_bias is not None,
                                   quantized=quantize is not None, expert_halves=expert_halves,
                                   intermediate=module.w_down.shape[-1])
        layouts = expert_field_layouts(target, lowering)
        for attr, field in MOE_FIELDS.items():
            weight = getattr(module, attr, None)
            if field not in _EARLY_FIELDS or weight is None:
                continue
            if field in _ROUTER_FIELDS and module.router_in_fp32 and weight.dtype != torch.float32:
                continue  # the graph casts it to fp32, and the optimizer folds that cast into a constant of its own
            recipe = sources.recipe(f"{path}.{attr}")
            if field in layouts:
                recipe = replace(recipe, expert_layout=layouts[field])
            tensor = StreamedTensor(recipe, f"{path}.{attr}")
            if quantize is not None and field in _QUANTIZED_FIELDS and lowering.lowered_to == "com.microsoft.QMoE":
                found.extend((path, field, part) for part in quantized_pair(tensor, quantize, tensor.name))
            else:
                found.append((path, field, tensor))
    return found


class EarlyMoEWrites:
    """Creates the data file at `data_path` and starts writing the MoE tensors to it from
    offset 0, each where `planned` says (computed from their sizes alone, so that the rest can
    be written from `rest_start` at the same time); `finish()` waits for the writer and says
    where each tensor is; `cancel()` stops it. The caller calls `cancel()` on its way out in any case."""

    def __init__(self, skeleton: torch.nn.Module, moe_model: MoEModel, target: str, data_path: Path,
                 quantize: QuantScheme | None = None, expert_halves: bool = False) -> None:
        tensors = _moe_tensors(skeleton, moe_model, target, quantize, expert_halves)
        self._keys = [recipe_key(tensor) for _, _, tensor in tensors]
        self.planned: dict[tuple, tuple[int, int] | None] = {}  # recipe key -> (offset, length); None: inline
        end = 0
        for key, (_, _, tensor) in zip(self._keys, tensors):
            if tensor.nbytes < INLINE_LIMIT:
                self.planned[key] = None
            else:
                offset = -(-end // ALIGNMENT) * ALIGNMENT
                self.planned[key], end = (offset, tensor.nbytes), offset + tensor.nbytes
        self.rest_start = -(-end // ALIGNMENT) * ALIGNMENT
        data_path.write_bytes(b"")  # the writers open it from their offsets
        if sum(tensor.nbytes for _, _, tensor in tensors) >= CHILD_PROCESS_BYTES:
            self._writer = _ChildProcessWriter(moe_model.path, tensors, data_path)
        else:
            self._writer = _ThreadWriter([tensor for _, _, tensor in tensors], data_path)

    def finish(self) -> dict[tuple, ir.TensorProtocol]:
        """-> {recipe key: where that tensor is now: an ir.ExternalTensor at its planned offset,
        or its values}; the writer's error, if it failed."""
        placed = {self._keys[index]: tensor for index, tensor in self._writer.finish().items()}
        for key, tensor in placed.items():
            where = (tensor.offset, tensor.length) if isinstance(tensor, ir.ExternalTensor) else None
            if where != self.planned[key]:
                raise RuntimeError(f"{key[0]} was written at {where}, planned at {self.planned[key]}")
        return placed

    def cancel(self) -> None:
        self._writer.cancel()


class _ThreadWriter:
    def __init__(self, tensors: list[SlicedTensor], data_path: Path) -> None:
        self._tensors = list(enumerate(tensors))
        self._data_path = data_path
        self._placed: dict[int, ir.TensorProtocol] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="export-moe-early", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        try:
            with DirectFile(self._data_path, start=0) as data:
                self._placed = append_tensors(data, self._tensors, self._data_path, stop=self._stop,
                                              thread_name=READ_THREAD)
        except BaseException as exc:  # raised in the main thread by finish()
            self._error = exc
        finally:
            self._tensors = []  # their recipes hold the MoE layer last read

    def finish(self) -> dict[int, ir.TensorProtocol]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._placed

    def cancel(self) -> None:
        self._stop.set()
        self._thread.join()


class _ChildProcessWriter:
    def __init__(self, model_path: Path, tensors: list[tuple[str, str, SlicedTensor]], data_path: Path) -> None:
        self._tensors = [tensor for _, _, tensor in tensors]
        self._data_path = data_path
        job = {"model": str(model_path), "data": str(data_path), "tensors": []}
        for module_path, field, tensor in tensors:
            quantized = None
            if isinstance(tensor, QuantizedTensor):
                quantized, tensor = (tensor.quantization.scheme, tensor.part), tensor.quantization.weight
            recipe = tensor.recipe
            job["tensors"].append((module_path, tensor.name, recipe.source, field, recipe.layer, recipe.source_shape,
                                   recipe.dtype, recipe.expert_layout, quantized))
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, OMP_NUM_THREADS=str(_compute_threads()),
                   PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._log = data_path.with_name(data_path.name + ".log")
        with open(self._log, "wb") as log:
            self._process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=log, env=env)
        self._process.stdin.write(pickle.dumps(job))
        self._process.stdin.close()

    def finish(self) -> dict[int, ir.TensorProtocol]:
        result = self._process.stdout.read()
        code = self._process.wait()
        if code != 0 or not result:
            lines = self._log.read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the process writing the MoE weights ended with code {code}"
                               + (f": {lines[-1]}" if lines else ""))
        outcome = pickle.loads(result)
        if outcome[0] == "InvalidInput":
            raise InvalidInput(outcome[1])
        if outcome[0] == "OSError":
            raise OSError(*outcome[1:])
        _, placed, peak = outcome
        from moe_compile.process_memory import record_helper_peak

        record_helper_peak(peak)
        return {index: self._placed(self._tensors[index], where) for index, where in placed.items()}

    def _placed(self, tensor: SlicedTensor, where: tuple) -> ir.TensorProtocol:
        if where[0] == "inline":
            return ir.tensor(where[1], name=tensor.name)
        _, offset, length = where
        return external_tensor(self._data_path, offset, length, tensor)

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()
        self._process.stdout.close()


def _compute_threads() -> int:
    """The child's compute threads: every core this process may run on but the one the trace
    needs (it is Python on one core), at least one; more would spin idle OpenMP workers on the
    trace's core. Its work alone scales with them: on a 2-core VM, the int4 experts of four
    Qwen3-30B-A3B-shaped layers took 15.3-16.3 s on one thread, 10.9-12.2 s on two (no trace
    beside it; 2026-12-05, by hand); with a trace beside it, this VM gives it one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def _write_job(job: dict) -> tuple:
    """In the child process: the job's tensors written as `_ThreadWriter` writes them -> ("ok",
    {index: ("external", offset, length) or ("inline", values)}, this process' peak memory)."""
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.process_memory import peak_memory, start_sampling

    start_sampling()
    moe_model = load_moe_model(job["model"])
    checkpoint = SafetensorsCheckpoint(moe_model.path)
    layers = LayerWeights(moe_model, checkpoint)
    tensors, pairs = [], {}
    for index, (module_path, name, source, field, layer, shape, dtype, layout, quantized) in enumerate(job["tensors"]):
        # experts laid out one at a time are read one at a time, not as the whole layer
        read = (reader_without_layer(moe_model, checkpoint, layer, field, shape, per_expert=layout is not None)
                or functools.partial(layers.read, module_path, field))
        tensor = StreamedTensor(WeightRecipe(source, read, shape, dtype, layer=layer, expert_layout=layout), name)
        if quantized is not None:  # both parts from one pass over the experts, as in the parent
            scheme, part = quantized
            if (module_path, field) not in pairs:
                pairs[module_path, field] = quantized_pair(tensor, scheme, tensor.name)
            tensor = pairs[module_path, field][0 if part == "packed" else 1]
        tensors.append((index, tensor))
    data_path = Path(job["data"])
    with DirectFile(data_path, start=0) as data:
        placed = append_tensors(data, tensors, data_path, thread_name=READ_THREAD)
    return ("ok", {index: ("external", tensor.offset, tensor.length) if isinstance(tensor, ir.ExternalTensor)
                   else ("inline", tensor.numpy()) for index, tensor in placed.items()}, peak_memory())


def _child_main() -> int:
    job = pickle.load(sys.stdin.buffer)
    result, sys.stdout = sys.stdout.buffer, sys.stderr  # the pipe carries the pickled outcome alone
    try:
        outcome = _write_job(job)
    except InvalidInput as exc:
        outcome = ("InvalidInput", str(exc))
    except OSError as exc:
        outcome = ("OSError", exc.errno, exc.strerror, exc.filename)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    pickle.dump(outcome, result)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
