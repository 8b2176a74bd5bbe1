"""export/prompt_chunks.py: a prompt's GroupQueryAttention as Loops over sequences and chunks of rows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from moe_compile.export.prompt_chunks import chunk_prompt_attention
from moe_compile.export.subgraphs import all_nodes

HEADS, KV_HEADS, DIM = 4, 2, 8


def _attention_graph(outputs=("output",)) -> onnx.GraphProto:
    """One GroupQueryAttention over a whole prompt with nothing cached, as the export writes it."""
    inputs = [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["batch", "length", HEADS * DIM]),
              helper.make_tensor_value_info("key", TensorProto.FLOAT, ["batch", "length", KV_HEADS * DIM]),
              helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", "length", KV_HEADS * DIM]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention", ["query", "key", "value", "", "", "seqlens_k", "total"],
                            ["output", "present_key", "present_value"], name="attention", domain="com.microsoft",
                            num_heads=HEADS, kv_num_heads=KV_HEADS, scale=DIM ** -0.5)
    shapes = {"output": ["batch", "length", HEADS * DIM], "present_key": ["batch", KV_HEADS, "length", DIM]}
    return helper.make_graph([node], "attention", inputs,
                             [helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in outputs])


def _session(graph):
    import onnxruntime as ort

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch, length", [(1, 1), (1, 3), (1, 4), (1, 5), (1, 13), (2, 9), (3, 16)])
def test_chunks_give_the_whole_prompts_attention(batch, length):
    """Any length (shorter than a chunk, a whole number of chunks, a last chunk padded) and batch:
    the same output as the one node and as causal attention in PyTorch."""
    generator = np.random.default_rng(length)
    feed = {"query": generator.standard_normal((batch, length, HEADS * DIM), dtype=np.float32),
            "key": generator.standard_normal((batch, length, KV_HEADS * DIM), dtype=np.float32),
            "value": generator.standard_normal((batch, length, KV_HEADS * DIM), dtype=np.float32),
            "seqlens_k": np.full(batch, length - 1, np.int32), "total": np.array(length, np.int32)}
    whole = _session(_attention_graph()).run(["output"], feed)[0]
    graph = _attention_graph()
    assert chunk_prompt_attention(graph, TensorProto.FLOAT, rows=4) == 1
    ops = [node.op_type for node in all_nodes(graph.node)]
    assert ops.count("GroupQueryAttention") == 1 and ops.count("Loop") == 2
    chunked = _session(graph).run(["output"], feed)[0]
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)

    def heads(x, count):  # [B, S, N·D] -> [B, N, S, D]
        return torch.from_numpy(x).view(batch, length, count, DIM).transpose(1, 2)

    want = torch.nn.functional.scaled_dot_product_attention(
        heads(feed["query"], HEADS), heads(feed["key"], KV_HEADS), heads(feed["value"], KV_HEADS), is_causal=True,
        enable_gqa=True).transpose(1, 2).reshape(batch, length, HEADS * DIM)
    np.testing.assert_allclose(chunked, want.numpy(), rtol=1e-5, atol=1e-5)


def test_a_node_whose_cache_is_read_is_refused_and_one_with_a_past_left_alone():
    with pytest.raises(RuntimeError, match="present key and value are read"):
        chunk_prompt_attention(_attention_graph(outputs=("output", "present_key")), TensorProto.FLOAT)
    graph = _attention_graph()
    graph.node[0].input[3:5] = ["past_key", "past_value"]
    assert chunk_prompt_attention(graph, TensorProto.FLOAT) == 0
    assert [node.op_type for node in graph.node] == ["GroupQueryAttention"]


def test_nodes_inside_branches_are_rewritten_in_place():
    """The export's kernels sit in If branches (the prompt switch, the split by length)."""
    inner = _attention_graph()
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    empty = helper.make_graph([helper.make_node("Identity", ["query"], ["other"])], "else", [],
                              [helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", "length", HEADS * DIM])])
    switch = helper.make_node("If", ["flag"], ["result"], then_branch=helper.make_graph(
        list(inner.node), "then", [], list(inner.output)), else_branch=empty)
    graph = helper.make_graph([switch], "outer", [*inner.input, flag],
                              [helper.make_tensor_value_info("result", TensorProto.FLOAT, ["batch", "length", HEADS * DIM])])
    assert chunk_prompt_attention(graph, TensorProto.FLOAT, rows=4) == 1
    generator = np.random.default_rng(0)
    feed = {"query": generator.standard_normal((1, 6, HEADS * DIM), dtype=np.float32),
            "key": generator.standard_normal((1, 6, KV_HEADS * DIM), dtype=np.float32),
            "value": generator.standard_normal((1, 6, KV_HEADS * DIM), dtype=np.float32),
            "seqlens_k": np.array([5], np.int32), "total": np.array(6, np.int32), "flag": np.array(True)}
    whole = _session(_attention_graph()).run(["output"], {k: v for k, v in feed.items() if k != "flag"})[0]
    np.testing.assert_allclose(_session(graph).run(["result"], feed)[0], whole, rtol=1e-5, atol=1e-6)
