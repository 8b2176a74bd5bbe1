"""com.microsoft.MoE as If(tokens >= 4, sorted experts, the node): the sorted branch computes what
the node computes (routing, ties, renormalisation, SwiGLU variants, biases), fewer tokens still
run the node, and per-expert weights of a file with external data are views of its bytes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from moe_compile.export.length_dispatch import FEW_TOKENS, ONE_TOKEN
from moe_compile.export.lowering.onnxruntime import register_ms_schema
from moe_compile.export.lowering.sorted_experts import MIN_SORTED_TOKENS, is_expert_switch, sort_multi_token_experts
from moe_compile.export.subgraphs import all_nodes
from tiny_models import prompt_logits

E, H, I = 6, 16, 8


def _moe_model(k: int, biases: bool, **attrs) -> onnx.ModelProto:
    register_ms_schema("MoE")
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((E, 2 * I, H)).astype(np.float32) / 4, "fc1"),
             numpy_helper.from_array(rng.standard_normal((E, H, I)).astype(np.float32) / 3, "fc2")]
    if biases:
        inits += [numpy_helper.from_array(rng.standard_normal((E, 2 * I)).astype(np.float32) / 5, "b1"),
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


def test_ties_go_where_the_node_sends_them():
    """Equal logits: the node takes the higher expert index; so must the sorted branch."""
    model = _moe_model(k=2, biases=False, normalize_routing_weights=0)
    x = np.random.default_rng(1).standard_normal((4, H)).astype(np.float32)
    logits = np.zeros((4, E), np.float32)
    logits[1, [0, 2, 4]] = 1.0
    np.testing.assert_allclose(_run(_switched(model), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)


def test_few_tokens_run_the_node_and_more_run_the_sorted_branch():
    """Zero the node's own fc2 in the file: fewer than MIN_SORTED_TOKENS see it, more do not."""
    model = _switched(_moe_model(k=2, biases=False, normalize_routing_weights=0))
    reference = _moe_model(k=2, biases=False, normalize_routing_weights=0)
    fc2 = next(init for init in model.graph.initializer if init.name == "fc2")
    fc2.CopyFrom(numpy_helper.from_array(np.zeros((E, H, I), np.float32), "fc2"))
    tokens = MIN_SORTED_TOKENS
    x = np.ones((tokens, H), np.float32)
    logits = np.arange(tokens * E, dtype=np.float32).reshape(tokens, E) % 5
    assert not _run(model, x[:tokens - 1], logits[:tokens - 1]).any()  # the node, on the zeroed fc2
    np.testing.assert_allclose(_run(model, x, logits), _run(reference, x, logits), rtol=1e-5, atol=1e-5)


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
    loaded = onnx.load(path)
    arrays = {init.name: numpy_helper.to_array(init) for init in loaded.graph.initializer}
    for name in ("fc1", "fc2", "b1", "b2"):
        for e in range(E):
            np.testing.assert_array_equal(arrays[f"{name}.expert{e}"], arrays[name][e])
    rng = np.random.default_rng(3)
    x, logits = rng.standard_normal((9, H)).astype(np.float32), rng.standard_normal((9, E)).astype(np.float32)
    np.testing.assert_allclose(_run(str(path), x, logits), _run(model, x, logits), rtol=1e-5, atol=1e-5)


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
            # few tokens run the node, more the sorted experts
            assert len(moe_nodes["then_branch"]) == len(report["moe_layers"]) == len(sorted_layers) > 0
            assert moe_nodes["else_branch"] == []
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
