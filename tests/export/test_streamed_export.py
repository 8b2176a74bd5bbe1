"""Streamed export (weights written tensor by tensor from safetensors) against the in-memory
export it replaced, and a sharded checkpoint's faults: one line, exit 2, nothing left behind."""

import json
import shutil
import threading

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from canonical_onnx import canonical_graph
from tiny_models import prompt_logits, save_tiny_model
from moe_compile.cli import main
from moe_compile.compiler.checkpoint import SafetensorsCheckpoint
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import InvalidInput
from moe_compile.export.subgraphs import all_nodes, outer_reads, subgraphs
from moe_compile.direct_file import DirectFile
from moe_compile.export import early_experts, streamed_weights
from moe_compile.compiler.compiled import skeleton_model
from moe_compile.export.exporter import export_onnx
from moe_compile.export.repeated_layers import LayerRepeats, plan_repeats


def _graph_and_weights(path):
    """Nodes and weights with torch.onnx's numbered value names taken out (tests/canonical_onnx.py):
    the streamed export traces one decoder layer of each kind and repeats it, the in-memory one
    every layer, so the same graph comes out under other names."""
    model = onnx.load(str(path))  # external data loaded from beside the file
    nodes, initializer_names = canonical_graph(model)
    weights = {initializer_names[init.name]: numpy_helper.to_array(init) for init in model.graph.initializer}
    metadata = {p.key: p.value for p in model.metadata_props}
    return nodes, weights, metadata, [str(v) for v in (*model.graph.input, *model.graph.output)]


@pytest.mark.parametrize("model_type, target", [
    pytest.param("qwen2_moe", "onnxruntime", id="qwen2_moe-onnxruntime"),
    *(pytest.param(m, t, id=f"{m}-{t}", marks=pytest.mark.slow)
      for m in ("qwen3_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v3", "gpt_oss")
      for t in ("onnx", "onnxruntime")),
    pytest.param("qwen2_moe", "onnx", id="qwen2_moe-onnx", marks=pytest.mark.slow),
])
def test_streamed_export_is_the_in_memory_export(model_type, target, tiny_model_dirs, tmp_path, monkeypatch):
    """... with every MoE tensor written while the graph was traced used as it was written: the
    rest is written after them (export/early_experts.py), never the whole file again, and no
    byte of it is unused."""
    starts = _record_rest_starts(monkeypatch)
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs[model_type]), target, tmp_path)
    assert len(starts) == 1 and starts[0] is not None


def test_a_router_run_in_fp32_is_not_written_early_at_half_precision(tiny_model_dirs, tmp_path, monkeypatch):
    """DeepSeek's router runs in fp32: in an fp16 export the graph casts its weight, and the
    optimizer folds that cast into a constant of its own, so the fp16 weight written while the
    graph was traced was never used and the whole file was written again (found 2026-12-05).
    The router is no longer written early there: one pass, the same export."""
    starts = _record_rest_starts(monkeypatch)
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs["deepseek_v3"]), "onnxruntime", tmp_path, dtype="fp16")
    assert len(starts) == 1 and starts[0] is not None


@pytest.mark.parametrize("model_type", ["gpt_oss", "deepseek_v3"])
def test_experts_in_halves_are_written_early_as_the_in_memory_export_has_them(model_type, tiny_model_dirs, tmp_path,
                                                                             monkeypatch):
    """`--moe-prompts node` lays each com.microsoft.MoE's experts out in halves (gpt-oss: biases,
    the clamped SwiGLU; DeepSeek-V3: routing in standard ops): the streamed export writes them so
    while the graph is traced, byte for byte what the in-memory export makes; same logits as the
    default export."""
    starts = _record_rest_starts(monkeypatch)
    ir = load_moe_model(tiny_model_dirs[model_type])
    streamed, _ = _assert_streamed_is_in_memory(ir, "onnxruntime", tmp_path, moe_prompts="node")
    assert len(starts) == 1 and starts[0] is not None
    assert all(layer["experts"] == "in halves of their intermediate channels" for layer in streamed.layers)
    export_onnx(ir, tmp_path / "default" / "model.onnx", target="onnxruntime")
    np.testing.assert_allclose(prompt_logits(tmp_path / "streamed" / "model.onnx"),
                               prompt_logits(tmp_path / "default" / "model.onnx"), rtol=1e-4, atol=1e-4)


def _alternating_top_k(ir) -> dict[int, int]:
    """Every other MoE layer one expert below its base top-k: a plan's layers differ in k."""
    return {spec.index: spec.base_top_k - (number % 2) for number, spec in enumerate(ir.layers)}


@pytest.mark.parametrize("model_type, target", [
    pytest.param("qwen3_moe", "onnxruntime", id="qwen3_moe-onnxruntime"),
    pytest.param("deepseek_v3", "onnx", id="deepseek_v3-onnx"),
    *(pytest.param(m, t, id=f"{m}-{t}", marks=pytest.mark.slow)
      for m in ("qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v3", "gpt_oss")
      for t in ("onnx", "onnxruntime", "tensorrt")
      if (m, t) not in (("qwen3_moe", "onnxruntime"), ("deepseek_v3", "onnx"))),
])
def test_repeated_decoder_layers_make_the_in_memory_export(model_type, target, tmp_path):
    """Five layers under a plan whose k alternates: the streamed export traces the layers up to
    the last that is the first of its kind and copies them for the rest (export/repeated_layers.py);
    the in-memory export traces all five. Same nodes, weights, report and logits."""
    save_tiny_model(model_type, tmp_path / "model", num_hidden_layers=5)
    ir = load_moe_model(tmp_path / "model")
    top_k = _alternating_top_k(ir)
    repeats = plan_repeats(skeleton_model(ir, "fp32", top_k)[0], target, quantized=False)
    assert repeats is not None and repeats.traced < 5  # what is compared below was repeated
    reports = _assert_streamed_is_in_memory(ir, target, tmp_path, top_k=top_k)
    assert reports[0].layers == reports[1].layers
    assert [layer["top_k"] for layer in reports[0].layers] == [top_k[spec.index] for spec in ir.layers]
    if target != "tensorrt":  # a GroupedMoE node ONNX Runtime cannot run
        streamed, in_memory = (prompt_logits(tmp_path / kind / "model.onnx") for kind in ("streamed", "in_memory"))
        assert np.array_equal(streamed, in_memory)


def test_layers_that_cannot_be_copied_are_traced_instead(tiny_model_dirs, tmp_path, monkeypatch):
    """Where the traced graph does not say which module each node came from (torch.onnx's
    name-scope metadata, read from another key here), nothing is copied: every layer is traced,
    with a warning, and the file is the in-memory export's."""
    from moe_compile.export import repeated_layers

    monkeypatch.setattr(repeated_layers, "_SCOPES", "not.a.metadata.key")
    with pytest.warns(UserWarning, match="tracing every decoder layer"):
        reports = _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs["qwen3_moe"]), "onnxruntime", tmp_path)
    assert reports[0].layers == reports[1].layers


@pytest.mark.parametrize("model_type, target, top_k, traced, templates", [
    # layer 1 is dense (mlp_only_layers): the MoE layers 3 and 4 repeat layer 2
    ("qwen2_moe", "onnxruntime", None, 3, {3: 2, 4: 2}),
    # sliding and full attention alternate: each layer repeats the last one of its type
    ("gpt_oss", "onnxruntime", None, 3, {3: 1, 4: 2}),
    # k held in com.microsoft.MoE's attribute alone: one kind whatever k is
    ("qwen3_moe", "onnxruntime", "alternating", 2, {2: 1, 3: 1, 4: 1}),
    ("qwen3_moe", "tensorrt", "alternating", 2, {2: 1, 3: 1, 4: 1}),
    # k in TopK and the shapes after it (standard ops; DeepSeek-V3's routing beside the node): part of the kind
    ("qwen3_moe", "onnx", "alternating", 3, {3: 1, 4: 2}),
    ("deepseek_v3", "onnxruntime", "alternating", 3, {3: 1, 4: 2}),
])
def test_which_decoder_layers_are_traced_and_which_repeated(model_type, target, top_k, traced, templates, tmp_path):
    save_tiny_model(model_type, tmp_path, num_hidden_layers=5)
    ir = load_moe_model(tmp_path)
    skeleton, _ = skeleton_model(ir, "fp32", _alternating_top_k(ir) if top_k else None)
    assert plan_repeats(skeleton, target, quantized=False) == LayerRepeats(traced, templates)


def test_a_model_without_a_repeated_kind_is_traced_whole(tiny_model_dirs):
    """The tiny gpt_oss: layer 2 (sliding) is like layer 0 only, which is never repeated."""
    skeleton, _ = skeleton_model(load_moe_model(tiny_model_dirs["gpt_oss"]))
    assert plan_repeats(skeleton, "onnxruntime", quantized=False) is None


@pytest.mark.parametrize("model_type, scheme", [
    pytest.param("qwen2_moe", "int4", id="qwen2_moe-int4"),
    *(pytest.param(m, s, id=f"{m}-{s}", marks=pytest.mark.slow)
      for m, s in (("qwen2_moe", "int8"), ("qwen3_moe", "int4"), ("olmoe", "int4"), ("mixtral", "int8"),
                   ("deepseek_v3", "int4"), ("gpt_oss", "int4"))),
])
def test_streamed_quantized_export_is_the_in_memory_one(model_type, scheme, tiny_model_dirs, tmp_path, monkeypatch):
    """`export --quantize` streams too: every quantized weight is read once, its packed values
    and scales computed from that one pass (export/quantized_weights.py) and written as they
    come, the experts' while the graph is traced (export/early_experts.py), as they are used."""
    from moe_compile.export.quantized_weights import BlockQuantization
    from moe_compile.quantization.scheme import QuantScheme

    starts = _record_rest_starts(monkeypatch)
    passes = []
    rows = BlockQuantization._rows

    def counted(self):
        passes.append(self.weight.name)
        return rows(self)

    monkeypatch.setattr(BlockQuantization, "_rows", counted)
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs[model_type]), "onnxruntime", tmp_path,
                                  quantize=QuantScheme(scheme, 16))
    assert len(starts) == 1 and starts[0] is not None
    model = onnx.load(str(tmp_path / "in_memory" / "model.onnx"), load_external_data=False)
    quantized = [init.name for init in model.graph.initializer if init.name.endswith(".scales")]
    assert len(passes) == 2 * len(quantized)  # once in each export: the scales from the values' pass


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_moe_tensors_written_early_but_laid_out_otherwise_are_written_again(quantize, tiny_model_dirs, tmp_path,
                                                                           monkeypatch):
    """Were the layouts predicted before the trace wrong, the file is written again from the
    start: the same export, no unused bytes (for a quantized export too, whose early experts are
    then quantized from the wrong layout)."""
    from moe_compile.quantization.scheme import QuantScheme

    monkeypatch.setattr(early_experts, "expert_field_layouts", lambda target, lowering: {})
    starts = _record_rest_starts(monkeypatch)
    options = {"quantize": QuantScheme(quantize, 16)} if quantize else {}
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs["qwen2_moe"]), "onnxruntime", tmp_path, **options)
    assert starts == [None]


def _record_rest_starts(monkeypatch) -> list:
    """Where each streamed export's writer of the non-early tensors starts: None means the file
    was written from the start."""
    starts = []

    def recording(path, start=None):
        starts.append(start)
        return DirectFile(path, start=start)

    monkeypatch.setattr(streamed_weights, "DirectFile", recording)
    return starts


def _assert_no_unused_bytes(path):
    """The external tensors (and the views of them the sorted-experts pass adds) cover the data
    file but for the gaps up to each tensor's 4096-byte boundary."""
    model = onnx.load(str(path), load_external_data=False)
    spans = sorted((int(fields["offset"]), int(fields["length"])) for init in model.graph.initializer
                   if (fields := {entry.key: entry.value for entry in init.external_data}))
    end = 0
    for offset, length in spans:
        assert offset <= end or offset == -(-end // 4096) * 4096, (offset, end)
        end = max(end, offset + length)
    assert (path.parent / f"{path.name}.data").stat().st_size == end


def _assert_value_info_names_values(path):
    """Every value_info entry, in the graph and its branches, names a value the model has (none
    left behind by a rename)."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(all_nodes(model.graph.node))
    branches = [graph for node in nodes for graph in subgraphs(node)]
    graphs = [model.graph, *branches]
    values = {value.name for value in model.graph.input} | {init.name for init in model.graph.initializer}
    values.update(output for node in nodes for output in node.output)
    assert [info.name for graph in graphs for info in graph.value_info if info.name not in values] == []


def _assert_streamed_is_in_memory(ir, target, tmp_path, **options):
    """-> the two exports' lowering reports (streamed, in memory)."""
    streamed = export_onnx(ir, tmp_path / "streamed" / "model.onnx", target=target, **options)
    in_memory = export_onnx(ir, tmp_path / "in_memory" / "model.onnx", target=target, streamed=False, **options)
    _assert_no_unused_bytes(tmp_path / "streamed" / "model.onnx")
    _assert_value_info_names_values(tmp_path / "streamed" / "model.onnx")
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == ["model.onnx", "model.onnx.data"]
    nodes, weights, metadata, signature = _graph_and_weights(tmp_path / "streamed" / "model.onnx")
    nodes_ref, weights_ref, metadata_ref, signature_ref = _graph_and_weights(tmp_path / "in_memory" / "model.onnx")
    graph = onnx.load(tmp_path / "streamed" / "model.onnx", load_external_data=False).graph
    assert {init.name for init in graph.initializer} <= outer_reads(graph.node)  # none left for ONNX Runtime to drop
    assert nodes == nodes_ref and metadata == metadata_ref and signature == signature_ref
    assert sorted(weights) == sorted(weights_ref)
    for name, value in weights.items():
        assert value.dtype == weights_ref[name].dtype and value.shape == weights_ref[name].shape, name
        assert np.array_equal(value, weights_ref[name], equal_nan=True), name  # NaN: the poison constant
    return streamed.report, in_memory.report


def _sharded(folder):
    """The tiny model's single model.safetensors split in two shards with an index."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        save_file({name: tensors[name] for name in members}, folder / shard, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, members in shards.items() for name in members}}))
    return folder


def _truncate_data(path):
    path.write_bytes(path.read_bytes()[:-64])  # header intact, the last tensor's bytes short


def _name_twice(path):
    first = load_file(path.parent / "model-00001-of-00002.safetensors")
    name = sorted(first)[0]
    second = load_file(path)
    second[name] = first[name]
    save_file(second, path, metadata={"format": "pt"})


SHARD_FAULTS = {
    "missing shard": (lambda p: p.unlink(), "names shard 'model-00002-of-00002.safetensors', which is not in"),
    "truncated shard": (_truncate_data, "model-00002-of-00002.safetensors is not a readable safetensors file"),
    "tensor in two shards": (_name_twice, "is in both model-00001-of-00002.safetensors and model-00002-of-00002"),
}


@pytest.mark.parametrize("case", sorted(SHARD_FAULTS))
def test_shard_fault_is_one_line_and_leaves_nothing(case, tiny_model_dirs, tmp_path, capsys):
    folder = _sharded(shutil.copytree(tiny_model_dirs["qwen2_moe"], tmp_path / "model"))
    breaker, message = SHARD_FAULTS[case]
    breaker(folder / "model-00002-of-00002.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["export", str(folder), "--target", "onnxruntime", "--out", str(out_dir / "model.onnx")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("thread, failing_read", [
    pytest.param(early_experts.READ_THREAD, 3, id="while the graph is traced"),
    pytest.param("MainThread", 5, id="while optimizing", marks=pytest.mark.slow),
    pytest.param("export-weights", 3, id="while writing")])
def test_a_read_failing_mid_export_leaves_no_file(thread, failing_read, tiny_model_dirs, tmp_path, monkeypatch):
    """The checkpoint breaks while the MoE tensors are written during the trace
    (export/early_experts.py), while the optimizer folds small weights, or while the other
    weights are written: the error itself comes out, the staged model.onnx.data is removed and
    nothing is renamed into place."""
    ir = load_moe_model(tiny_model_dirs["qwen2_moe"])
    read = SafetensorsCheckpoint.read
    calls = []

    def fails_once(self, name):
        if threading.current_thread().name == thread:
            calls.append(name)
            if len(calls) == failing_read:
                raise InvalidInput(f"cannot read tensor '{name}' (injected)")
        return read(self, name)

    monkeypatch.setattr(SafetensorsCheckpoint, "read", fails_once)
    with pytest.raises(InvalidInput, match="injected"):
        export_onnx(ir, tmp_path / "model.onnx", target="onnxruntime")
    assert len(calls) == failing_read and list(tmp_path.iterdir()) == []


def test_moe_tensors_written_by_a_child_process_make_the_same_export(tiny_model_dirs, tmp_path, monkeypatch):
    """Past CHILD_PROCESS_BYTES the MoE tensors are written by `python -m
    moe_compile.export.early_experts` (the trace would starve a thread of the interpreter lock):
    the same file, and the child's peak memory in the command's report."""
    from moe_compile import process_memory

    monkeypatch.setattr(early_experts, "CHILD_PROCESS_BYTES", 0)
    monkeypatch.setattr(process_memory, "_HELPER_PEAKS", [])
    starts = _record_rest_starts(monkeypatch)
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs["qwen2_moe"]), "onnxruntime", tmp_path)
    assert len(starts) == 1 and starts[0] is not None
    report = process_memory.peak_memory()
    assert report["helper_peak_rss_bytes"] > 0 and report["total_peak_anon_rss_bytes"] >= report["helper_peak_anon_rss_bytes"]


def test_quantized_experts_written_by_a_child_process_make_the_same_export(tiny_model_dirs, tmp_path, monkeypatch):
    from moe_compile.quantization.scheme import QuantScheme

    monkeypatch.setattr(early_experts, "CHILD_PROCESS_BYTES", 0)
    starts = _record_rest_starts(monkeypatch)
    _assert_streamed_is_in_memory(load_moe_model(tiny_model_dirs["qwen3_moe"]), "onnxruntime", tmp_path,
                                  quantize=QuantScheme("int4", 16))
    assert len(starts) == 1 and starts[0] is not None


def test_a_nonfinite_expert_weight_read_by_the_child_process_is_one_error(tiny_model_dirs, tmp_path, monkeypatch):
    """The child's InvalidInput comes out of the export as itself; nothing is left behind."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["qwen2_moe"], folder)
    tensors = load_file(folder / "model.safetensors")
    name = "model.layers.0.mlp.experts.3.up_proj.weight"
    tensors[name][1, 2] = float("inf")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(early_experts, "CHILD_PROCESS_BYTES", 0)
    out = tmp_path / "out"
    out.mkdir()
    ir = load_moe_model(folder)
    with pytest.raises(InvalidInput, match=f"tensor '{name}' holds 1 non-finite value"):
        export_onnx(ir, out / "model.onnx", target="onnxruntime")
    assert list(out.iterdir()) == []


def test_a_failed_trace_stops_the_child_process(tiny_model_dirs, tmp_path, monkeypatch):
    from moe_compile.export import exporter

    processes = []
    real_popen = early_experts.subprocess.Popen

    def popen(*args, **kwargs):
        processes.append(real_popen(*args, **kwargs))
        return processes[-1]

    def failing_trace(*args, **kwargs):
        raise InvalidInput("the trace failed (injected)")

    monkeypatch.setattr(early_experts, "CHILD_PROCESS_BYTES", 0)
    monkeypatch.setattr(early_experts.subprocess, "Popen", popen)
    monkeypatch.setattr(exporter, "_trace", failing_trace)
    with pytest.raises(InvalidInput, match="injected"):
        export_onnx(load_moe_model(tiny_model_dirs["qwen2_moe"]), tmp_path / "model.onnx", target="onnxruntime")
    assert len(processes) == 1 and processes[0].poll() is not None
    assert list(tmp_path.iterdir()) == []


def test_a_score_bias_is_read_without_its_layers_experts(tiny_model_dirs, monkeypatch):
    """DeepSeek-V3's score bias, which the ONNX optimizer folds, is read by itself
    (LayerWeights via the adapter's `read_score_bias`), not with the layer's experts: at real
    sizes that would read every MoE layer of the checkpoint once more."""
    from moe_compile.compiler.weight_sources import LayerWeights

    read = SafetensorsCheckpoint.read
    reads = []

    def recording(self, name):
        reads.append(name)
        return read(self, name)

    monkeypatch.setattr(SafetensorsCheckpoint, "read", recording)
    ir = load_moe_model(tiny_model_dirs["deepseek_v3"])
    spec = ir.layers[0]
    bias = LayerWeights(ir).read(spec.module_path, "score_bias")
    assert reads == [f"{spec.module_path}.gate.e_score_correction_bias"] and bias.shape == (spec.num_experts,)


@pytest.mark.parametrize("cores, threads", [({0}, 1), ({0, 1}, 1), (set(range(16)), 15)])
def test_the_writing_process_computes_on_every_core_but_the_traces(cores, threads, monkeypatch):
    from moe_compile.export import early_experts

    monkeypatch.setattr(early_experts.os, "sched_getaffinity", lambda pid: cores, raising=False)
    assert early_experts._compute_threads() == threads


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """The tiny qwen2_moe saved as bf16, as real checkpoints are."""
    import torch
    from tiny_models import tiny_model

    folder = tmp_path_factory.mktemp("bf16") / "qwen2_moe"
    tiny_model("qwen2_moe", 0).to(torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_the_embedding_is_kept_as_the_checkpoint_stores_it(quantize, bf16_checkpoint, tmp_path):
    """An fp32 export of a bf16 checkpoint stores the table only Gather reads in bf16, casts the
    rows it looks up to fp32 (the same numbers), streamed as in memory; validate passes."""
    from moe_compile.quantization.scheme import quant_scheme
    from moe_compile.validate.parity import validate_onnx

    ir = load_moe_model(bf16_checkpoint)
    scheme = quant_scheme(quantize, None, int(ir.config.hidden_size), [s.intermediate for s in ir.layers]) \
        if quantize else None
    _assert_streamed_is_in_memory(ir, "onnxruntime", tmp_path, quantize=scheme)
    path = tmp_path / "streamed" / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    [table] = [init for init in graph.initializer if init.name == "model.model.embed_tokens.weight"]
    assert table.data_type == onnx.TensorProto.BFLOAT16
    nodes = list(all_nodes(graph.node))  # an int4 file's body is in the branches of its split by length
    gathers = [node for node in nodes if table.name in node.input]
    assert gathers and all(node.op_type == "Gather" for node in gathers)
    for gather in gathers:
        readers = [node for node in nodes if gather.output[0] in node.input]  # (a branch's copy has its own)
        assert readers and all(node.op_type == "Cast" and [a.i for a in node.attribute if a.name == "to"]
                               == [onnx.TensorProto.FLOAT] for node in readers)
    report = validate_onnx(ir, path)
    assert report.passed, report.to_json()


def test_a_table_that_something_besides_gather_reads_stays_fp32():
    import onnx_ir as ir
    import torch

    from moe_compile.export.narrow_tables import narrow_lookup_tables

    table = ir.Value(name="table", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([4, 2]),
                     const_value=ir.tensor(np.ones((4, 2), np.float32), name="table"))
    ids = ir.Value(name="ids", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([3]))
    gather = ir.node("Gather", [table, ids])
    tied = ir.node("MatMul", [gather.outputs[0], table])
    graph = ir.Graph([ids], tied.outputs, nodes=[gather, tied], initializers=[table])
    assert narrow_lookup_tables(graph, lambda name: torch.bfloat16) == []
    assert table.dtype == ir.DataType.FLOAT
