"""export/length_dispatch.py on a one-projection graph: one-token inputs run the int8-compute
body, longer ones the graph as built, and the prompt body comes back out unchanged."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from moe_compile.export.length_dispatch import prompt_graph, split_by_length
from moe_compile.quantization import pack, quantize_blocks

VOCAB, HIDDEN, OUT, BLOCK = 64, 64, 48, 16


def _projection_model() -> onnx.ModelProto:
    """input_ids -> embedding -> MatMulNBits (4 bits, fp32 compute) -> logits."""
    import torch

    rng = np.random.default_rng(0)
    blocks = quantize_blocks(torch.from_numpy(rng.standard_normal((OUT, HIDDEN)).astype(np.float32)), 4, BLOCK)
    initializers = [numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "embed"),
                    numpy_helper.from_array(pack(blocks), "w"), numpy_helper.from_array(blocks.scales.numpy(), "w.scales")]
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["hidden"]),
             helper.make_node("MatMulNBits", ["hidden", "w", "w.scales"], ["logits"], domain="com.microsoft",
                              K=HIDDEN, N=OUT, bits=4, block_size=BLOCK, accuracy_level=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", OUT])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]


def _with_accuracy_level(model: onnx.ModelProto, level: int) -> onnx.ModelProto:
    changed = copy.deepcopy(model)
    for attr in changed.graph.node[1].attribute:
        if attr.name == "accuracy_level":
            attr.i = level
    return changed


def test_one_token_runs_int8_compute_and_prompts_fp32():
    model = _projection_model()
    split = copy.deepcopy(model)
    assert split_by_length(split)
    ids = np.arange(2 * 5).reshape(2, 5) % VOCAB
    step = ids[:, :1]
    fp32_compute, int8_compute = model, _with_accuracy_level(model, 4)
    assert not np.array_equal(_run(fp32_compute, step), _run(int8_compute, step))  # the two bodies differ
    np.testing.assert_array_equal(_run(split, step), _run(int8_compute, step))
    np.testing.assert_array_equal(_run(split, ids), _run(fp32_compute, ids))
    assert len(split.graph.initializer) == len(model.graph.initializer)  # weights held once


def test_prompt_graph_gives_back_the_graph_as_built():
    model = _projection_model()
    split = copy.deepcopy(model)
    split_by_length(split)
    prompt_graph(split)
    assert split.graph.node == model.graph.node
    unchanged = copy.deepcopy(model)
    prompt_graph(unchanged)
    assert unchanged == model


def test_graph_without_matmulnbits_is_left_alone():
    model = _projection_model()
    del model.graph.node[1:]
    model.graph.node[0].output[0] = "logits"
    before = copy.deepcopy(model)
    assert not split_by_length(model)
    assert model == before
