"""com.microsoft.MoE as If(tokens >= 4, sorted experts, the node): the sorted branch computes what
the node computes (routing, ties, renormalisation, SwiGLU variants, biases), fewer tokens still
run the node (on its experts in halves, gathered when the session starts, where the intermediate
size is even), and per-expert weights of a file with external data are views of its bytes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from moe_compile.export.length_dispatch import FEW_TOKENS, ONE_TOKEN
from moe_compile.export.lowering.onnxruntime import register_ms_schema
from moe_compile.export.lowering.ort_support import FEW_TOKEN_HALVES
from moe_compile.export.lowering.sorted_experts import (MIN_SORTED_TOKENS, gathered_halves_bytes, is_expert_switch,
                                                        sort_multi_token_experts)
from moe_compile.export.subgraphs import all_nodes, subgraphs
from tiny_models import prompt_logits

E, H, I = 6, 16, 8


def _moe_model(k: int, biases: bool, intermediate: int = I, **attrs) -> onnx.ModelProto:
    register_ms_schema("MoE")
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((E, 2 * intermediate, H)).astype(np.float32) / 4, "fc1"),
             numpy_helper.from_array(rng.standard_normal((E, H, intermediate)).astype(np.float32) / 3, "fc2")]
    if biases:
        inits += [numpy_helper.from_array(rng.standard_normal((E, 2 * intermediate)).astype(np.float32) / 5, "b1"),
                  numpy_helper.from_array(rng.standard_normal((E, H)).astype(np.float32) / 5, "b2")]
    node = helper.make_node("MoE", ["x", "logits", "fc1", "b1" if biases else "", "fc2", "b2" if biases else ""], ["y"],
                            name="moe", domain="com.microsoft", k=k, activation_type="swiglu", swiglu_fusion=1, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", H]),
                                            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", E])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto | str, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x, "logits": logits})[0]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _switched(model: onnx.ModelProto) -> onnx.ModelProto:
    switched = _copy(model)
    assert sort_multi_token_experts(switched) == 1
    return switched


VARIANTS = {
    "silu, no renormalisation": dict(k=2, biases=False, normalize_routing_weights=0),
    "renormalised top-3": dict(k=3, biases=False, normalize_routing_weights=1),
    "gpt-oss clamp and biases": dict(k=2, biases=True, normalize_routing_weights=1, activation_alpha=1.702,
                                     activation_beta=1.0, swiglu_limit=0.3),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens", [1, 4, 5, 40])
def test_sorted_branch_computes_what_the_node_computes(variant, tokens):
    model = _moe_model(**VARIANTS[variant])
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, H)).astype(np.float32)
    logits = rng.standard_normal((tokens, E)).astype(np.float32) * 2
    np.testing.assert_allclose(_run(_switched(model), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [2, 4])
def test_ties_go_where_the_node_sends_them(tokens):
    """Equal logits: the node takes the higher expert index; so must the sorted branch, and the node
    on its experts in halves (whose own choice would take both halves of the tied experts apart)."""
    model = _moe_model(k=2, biases=False, normalize_routing_weights=0)
    x = np.random.default_rng(1).standard_normal((tokens, H)).astype(np.float32)
    logits = np.zeros((tokens, E), np.float32)
    logits[1, [0, 2, 4]] = 1.0
    np.testing.assert_allclose(_run(_switched(model), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)


def test_few_tokens_run_the_node_and_more_run_the_sorted_branch():
    """Zero the node's own fc2 (its halves, the few-token node's copy here, inline) in the file: fewer
    than MIN_SORTED_TOKENS see it, more do not."""
    model = _switched(_moe_model(k=2, biases=False, normalize_routing_weights=0))
    reference = _moe_model(k=2, biases=False, normalize_routing_weights=0)
    fc2 = next(init for init in model.graph.initializer if init.name == "fc2.as_slices")
    fc2.CopyFrom(numpy_helper.from_array(np.zeros(fc2.dims, np.float32), fc2.name))
    tokens = MIN_SORTED_TOKENS
    x = np.ones((tokens, H), np.float32)
    logits = np.arange(tokens * E, dtype=np.float32).reshape(tokens, E) % 5
    assert not _run(model, x[:tokens - 1], logits[:tokens - 1]).any()  # the node, on the zeroed fc2
    np.testing.assert_allclose(_run(model, x, logits), _run(reference, x, logits), rtol=1e-5, atol=1e-5)


def _few_token_nodes(model: onnx.ModelProto) -> list:
    (switch,) = [node for node in model.graph.node if is_expert_switch(node)]
    few = next(attr.g for attr in switch.attribute if attr.name == "else_branch")
    return [node for node in few.node if node.op_type == "MoE"]


@pytest.mark.parametrize("biases", [False, True])
def test_few_tokens_run_the_node_on_its_experts_in_halves(biases):
    """Below MIN_SORTED_TOKENS: 2E experts (each expert's halves, gathered from the node's own
    tensors), 2k chosen, the same output as the node; an odd intermediate size keeps whole experts."""
    model = _moe_model(k=2, biases=biases, normalize_routing_weights=1)
    (halved,) = _few_token_nodes(_switched(model))
    assert next(attr.i for attr in halved.attribute if attr.name == "k") == 4
    rng = np.random.default_rng(5)
    for tokens in range(1, MIN_SORTED_TOKENS):
        x, logits = rng.standard_normal((tokens, H)).astype(np.float32), rng.standard_normal((tokens, E)).astype(np.float32)
        np.testing.assert_allclose(_run(_switched(model), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)
    # what a session gathers, as bench counts it: the node's fc1 (and its bias) and fc2, once
    assert gathered_halves_bytes(_switched(model)) == 4 * E * (2 * I * H + H * I + (2 * I if biases else 0))
    odd = _moe_model(k=2, biases=biases, normalize_routing_weights=1, intermediate=I - 1)
    (whole,) = _few_token_nodes(_switched(odd))
    assert gathered_halves_bytes(_switched(odd)) == 0
    assert list(whole.input) == list(odd.graph.node[0].input)
    x, logits = rng.standard_normal((2, H)).astype(np.float32), rng.standard_normal((2, E)).astype(np.float32)
    np.testing.assert_allclose(_run(_switched(odd), x, logits), _run(odd, x, logits), rtol=1e-5, atol=1e-5)


def test_external_weights_are_views_of_the_same_bytes(tmp_path):
    model = _moe_model(k=2, biases=True, normalize_routing_weights=1)
    path = tmp_path / "moe.onnx"
    onnx.save_model(_copy(model), path, save_as_external_data=True, location="moe.onnx.data", size_threshold=0)
    data_size = (tmp_path / "moe.onnx.data").stat().st_size
    on_disk = onnx.load(path, load_external_data=False)
    sort_multi_token_experts(on_disk)
    views = [init for init in on_disk.graph.initializer if ".expert" in init.name]
    assert len(views) == 4 * E and all(init.data_location == TensorProto.EXTERNAL for init in views)
    onnx.save_model(on_disk, path)
    assert (tmp_path / "moe.onnx.data").stat().st_size == data_size  # nothing appended
    originals = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    arrays = {init.name: numpy_helper.to_array(init) for init in onnx.load(path).graph.initializer}
    for name in ("fc1", "fc2", "b1", "b2"):
        for e in range(E):
            np.testing.assert_array_equal(arrays[f"{name}.expert{e}"], originals[name][e])
    for name in ("fc1", "fc2", "b1"):  # the halves' sources: the same bytes seen in another shape, read in their place
        (source,) = [init for init in on_disk.graph.initializer if init.name == f"{name}.as_slices"]
        np.testing.assert_array_equal(arrays[f"{name}.as_slices"].reshape(-1), originals[name].reshape(-1))
        assert source.data_location == TensorProto.EXTERNAL and name not in arrays
    rng = np.random.default_rng(3)
    for tokens in (2, 9):  # the node on halves, the sorted experts
        x, logits = rng.standard_normal((tokens, H)).astype(np.float32), rng.standard_normal((tokens, E)).astype(np.float32)
        np.testing.assert_allclose(_run(str(path), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)
    # ONNX Runtime gathers the halves once, when the session starts: no Gather of them is left to run
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx", load_external_data=False)
    sources = {f"{name}.as_slices" for name in ("fc1", "fc2", "b1")}
    assert not [node for node in all_nodes(optimized.graph.node) if sources & set(node.input)]
    (halved,) = [node for node in all_nodes(optimized.graph.node) if node.op_type == "MoE"]
    graphs = [optimized.graph, *(graph for node in all_nodes(optimized.graph.node) for graph in subgraphs(node))]
    initializers = {init.name for graph in graphs for init in graph.initializer}
    assert {halved.input[2], halved.input[3], halved.input[4], halved.input[5]} <= initializers


def test_fp16_nodes_are_left_alone():
    model = _moe_model(k=2, biases=False, normalize_routing_weights=0)
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    assert sort_multi_token_experts(model) == 0


def test_export_sorts_prompts_by_default_and_node_keeps_the_node(tiny_model_dirs, tmp_path, capsys):
    """`export` (CLI): by default every com.microsoft.MoE layer is switched, the report, the
    metadata and inspect say so; `--moe-prompts node` leaves the node alone, with the experts in
    halves (2E experts, 2k chosen; the report says so); same logits, and validate passes it."""
    from moe_compile.cli import main

    outputs = {}
    for mode in ("sorted", "node"):
        path = tmp_path / f"{mode}.onnx"
        assert main(["export", str(tiny_model_dirs["qwen2_moe"]), "--target", "onnxruntime", "--moe-prompts", mode,
                     "--out", str(path), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        model = onnx.load(path, load_external_data=False)
        metadata = {prop.key: prop.value for prop in model.metadata_props}
        (dispatch,) = [node for node in model.graph.node if node.op_type == "If"]  # split by length
        bodies = {attr.name: attr.g for attr in dispatch.attribute}
        moe_nodes = {name: [node for node in body.node if node.op_type == "MoE"] for name, body in bodies.items()}
        sorted_layers = [layer for layer in report["moe_layers"] if "prompts_lowered_to" in layer]
        assert not [node for node in all_nodes(model.graph.node) if is_expert_switch(node)]  # each resolved in its body
        if mode == "sorted":
            # few tokens run the node (on the experts in halves), more the sorted experts
            assert len(moe_nodes["then_branch"]) == len(report["moe_layers"]) == len(sorted_layers) > 0
            assert moe_nodes["else_branch"] == []
            assert all(layer["experts"] == FEW_TOKEN_HALVES for layer in report["moe_layers"])
            for node, layer in zip(moe_nodes["then_branch"], report["moe_layers"]):
                assert next(attr.i for attr in node.attribute if attr.name == "k") == 2 * layer["top_k"]
            assert metadata["moe_compile.moe_prompts"] == "sorted"
            assert metadata["moe_compile.split_by_length"] == report["split_by_length"] == FEW_TOKENS
        else:
            assert len(moe_nodes["then_branch"]) == len(moe_nodes["else_branch"]) == len(report["moe_layers"])
            assert not sorted_layers and "moe_compile.moe_prompts" not in metadata
            assert all(layer["experts"] == "in halves of their intermediate channels" for layer in report["moe_layers"])
            for node, layer in zip(moe_nodes["then_branch"], report["moe_layers"]):
                assert next(attr.i for attr in node.attribute if attr.name == "k") == 2 * layer["top_k"]
            assert main(["validate", str(tiny_model_dirs["qwen2_moe"]), "--onnx", str(path)]) == 0
            capsys.readouterr()
            assert metadata["moe_compile.split_by_length"] == ONE_TOKEN  # the attentions' switches still split it
        outputs[mode] = prompt_logits(path)
    np.testing.assert_allclose(outputs["sorted"], outputs["node"], rtol=1e-4, atol=1e-4)
    assert main(["inspect", str(tiny_model_dirs["qwen2_moe"]), "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)["layers"]
    assert all("prompts_lowered_to" in layer["lowering"]["onnxruntime"] for layer in inspected)


def test_a_session_whose_gathered_halves_cannot_fit_is_refused_in_one_line(tmp_path, monkeypatch):
    """ONNX Runtime copies the few-token halves when a session starts: with less memory available
    than that copy, the runner refuses before loading (NotEnoughMemory: one line, exit 2) instead of
    the process being killed; with enough, or without halves, it opens."""
    from moe_compile.errors import NotEnoughMemory
    from moe_compile.validate import memory
    from moe_compile.validate.runners import OnnxRuntimeRunner

    halved, whole = tmp_path / "halved.onnx", tmp_path / "whole.onnx"
    onnx.save(_switched(_moe_model(k=2, biases=False, normalize_routing_weights=0)), halved)
    onnx.save(_switched(_moe_model(k=2, biases=False, normalize_routing_weights=0, intermediate=I - 1)), whole)
    needed = gathered_halves_bytes(onnx.load(halved))
    assert needed > 0
    for prepack in (True, False):
        monkeypatch.setattr(memory, "available_bytes", lambda: needed - 1)
        with pytest.raises(NotEnoughMemory, match=r"halved.onnx: ONNX Runtime would copy .* --moe-prompts node") as refused:
            OnnxRuntimeRunner(halved, prepack=prepack)
        assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
        OnnxRuntimeRunner(whole, prepack=prepack)  # nothing gathered: nothing to refuse
        monkeypatch.setattr(memory, "available_bytes", lambda: needed)
        OnnxRuntimeRunner(halved, prepack=prepack)
