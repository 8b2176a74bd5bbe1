"""The export's grouped attention (export/grouped_attention.py): the same outputs as transformers'
SDPA attention on every architecture that uses it (padding, a cache, prefill and decode), a graph
that reads the KV cache in place, and parity of the export through ONNX Runtime."""

import numpy as np
import onnx
import pytest
import torch

from moe_compile.export.decoder import CausalLMWithCache, decoder_inputs, example_inputs, past_names
from moe_compile.export.grouped_attention import grouped_attention, grouped_query_attention
from moe_compile.export.length_dispatch import long_body
from moe_compile.export.subgraphs import all_nodes, subgraphs
from tiny_models import TINY_CONFIGS, tiny_model


def _sdpa_model(model_type: str) -> torch.nn.Module:
    model = tiny_model(model_type, 0)
    model.config._attn_implementation = "sdpa"  # what the export's skeleton is built with
    return model.eval()


@pytest.mark.parametrize("model_type", [name for name in TINY_CONFIGS if name != "gpt_oss"])
def test_grouped_attention_gives_sdpas_outputs(model_type):
    model = _sdpa_model(model_type)
    wrapper = CausalLMWithCache(model)
    prefill = example_inputs(model, torch.float32)  # batch 2, 3 tokens after 4 cached
    padded = prefill.attention_mask.clone()
    padded[1, :2] = 0  # the second sequence left-padded
    decode = decoder_inputs(model, torch.tensor([[5], [7]]), prefill.past)
    cases = [prefill.as_args(), (prefill.input_ids, padded, prefill.position_ids, prefill.past), decode.as_args()]
    with torch.no_grad():
        expected = [wrapper(*args) for args in cases]
        with grouped_attention(model) as grouped:
            got = [wrapper(*args) for args in cases]
    assert grouped and model.config._attn_implementation == "sdpa"  # restored on the way out
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_models_without_sdpa_attention_are_left_alone():
    model = tiny_model("gpt_oss", 0)  # its attention sinks need the eager attention
    with grouped_attention(model) as grouped:
        assert not grouped and model.config._attn_implementation == "eager"


def test_per_head_masks_and_the_default_causal_mask():
    """A mask per query head is split by group; with no mask, several query tokens are causal."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(shape, generator=generator) for shape in ([1, 4, 3, 8], [1, 2, 5, 8], [1, 2, 5, 6]))
    module = torch.nn.Module()
    causal = torch.ones(3, 5, dtype=torch.bool).tril(diagonal=2)
    per_head = causal.expand(1, 4, 3, 5).clone()
    per_head[0, 3, 1, :] = False  # query head 3 sees nothing at token 1
    repeated = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
    want = torch.nn.functional.scaled_dot_product_attention(query, *repeated, attn_mask=per_head).nan_to_num(0.0)
    got, _ = grouped_query_attention(module, query, key, value, per_head)
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)
    got, _ = grouped_query_attention(module, query, key, value, None)
    want = torch.nn.functional.scaled_dot_product_attention(query, *repeated, attn_mask=causal[None, None])
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


_VIEWS = ("Unsqueeze", "Reshape", "Concat", "Identity")  # what stands between the cache and a repeat of it


def _derives_from(graph, name: str, prefixes: tuple[str, ...], through: tuple[str, ...] = _VIEWS) -> bool:
    """Whether value `name` is a graph input named with one of `prefixes` (or their Concat with
    the new positions), or computed from one through the ops in `through`."""
    producers = {output: node for node in all_nodes(graph.node) for output in node.output}
    pending, seen = [name], set()
    while pending:
        value = pending.pop()
        if value.startswith(prefixes):
            return True
        node = producers.get(value)
        if value in seen or node is None or node.op_type not in through:
            continue
        seen.add(value)
        pending.extend(node.input[:1] if node.op_type != "Concat" else node.input)
    return False


def test_export_reads_the_cache_without_repeating_it(tiny_onnx):
    model = onnx.load(tiny_onnx, load_external_data=False)
    graph = model.graph
    layers = sum(value.name.startswith("past_key_values.") for value in graph.input) // 2
    cache = ("past_key_values.", "present.")
    (dispatch,) = [node for node in graph.node if node.op_type == "If"]  # split by length: two bodies
    for body in subgraphs(dispatch):
        nodes = list(all_nodes(body.node))
        repeats = [node.name for node in nodes if node.op_type in ("Expand", "Tile") and _derives_from(body, node.input[0], cache)]
        assert repeats == [], body.name
        products = [node for node in nodes if node.op_type == "MatMul"
                    and any(_derives_from(body, value, cache, _VIEWS + ("Transpose",)) for value in node.input)]
        assert len(products) == 2 * layers, body.name  # per layer, the scores and the weighted values read the cache itself


def _ops_run(session_path, feed: dict, profiles) -> tuple[set[str], np.ndarray]:
    """The op types ONNX Runtime ran for `feed` (its profiler, writing into folder `profiles`), and the logits."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(profiles / "onnxruntime_profile")
    session = ort.InferenceSession(str(session_path), options, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], feed)[0]
    with open(session.end_profiling()) as events:
        ran = {event["args"]["op_name"] for event in json.load(events) if event.get("cat") == "Node"}
    return ran, logits


@pytest.mark.parametrize("model_type, kernel", [
    ("qwen2_moe", True), ("mixtral", True),
    *(pytest.param(name, kernel, marks=pytest.mark.slow)
      for name, kernel in (("qwen3_moe", True), ("olmoe", True), ("deepseek_v2", False), ("deepseek_v3", False)))])
def test_whole_causal_prompts_run_group_query_attention(model_type, kernel, tmp_path, monkeypatch):
    """From MIN_PROMPT_KERNEL_TOKENS tokens, a prompt with nothing cached and no padding runs ONNX
    Runtime's GroupQueryAttention; shorter, padded and cached ones the grouped form; all match PyTorch.
    DeepSeek's attention (MLA: values narrower than queries and keys) never takes the kernel."""
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export import grouped_attention as module
    from moe_compile.export.exporter import export_onnx
    from moe_compile.export.lowering.prompt_attention import count_prompt_kernels
    from tiny_models import save_tiny_model

    monkeypatch.setattr(module, "MIN_PROMPT_KERNEL_TOKENS", 6)  # the tiny model's context is short
    model = save_tiny_model(model_type, tmp_path / "model")
    path = tmp_path / "model.onnx"
    report = export_onnx(load_moe_model(tmp_path / "model"), path, target="onnxruntime").to_json()
    onnx_model = onnx.load(path, load_external_data=False)
    layers = model.config.num_hidden_layers
    kernels = [node for node in all_nodes(onnx_model.graph.node) if node.op_type == "GroupQueryAttention"]
    metadata = {entry.key: entry.value for entry in onnx_model.metadata_props}
    if kernel:
        assert len(kernels) == layers == report["prompt_attention"]["attention_layers"]
        assert metadata["moe_compile.prompt_attention"] == "GroupQueryAttention from 6 tokens"
        assert all(len(node.output) == 3 for node in kernels)  # no scores output for ONNX Runtime to fill
        # decode steps run a body without switches (export/length_dispatch.py); in the prompts' body the
        # grouped form runs outside the If (export/hoisted_attention.py), which holds the kernel alone
        assert metadata["moe_compile.split_by_length"] == report["split_by_length"]
        switches = [node for node in long_body(onnx_model).node if node.op_type == "If" and count_prompt_kernels([node])]
        assert len(switches) == layers
        assert all([inner.op_type for inner in branch.node] == ["Slice"]
                   for switch in switches for attr in switch.attribute if attr.name == "else_branch" for branch in [attr.g])
    else:
        assert kernels == [] and "prompt_attention" not in report and "moe_compile.prompt_attention" not in metadata
    standard = tmp_path / "standard.onnx"  # a target without ONNX Runtime's contrib ops keeps the grouped form
    assert "prompt_attention" not in export_onnx(load_moe_model(tmp_path / "model"), standard, target="onnx").to_json()
    assert not [init for init in onnx.load(standard, load_external_data=False).graph.initializer
                if init.name.startswith("hoisted_attention.")]  # nothing hoisted, nothing added

    wrapper = CausalLMWithCache(model)
    long = example_inputs(model, torch.float32, past_length=0, sequence=9)
    padded = long.attention_mask.clone()
    padded[1, :3] = 0
    cached = example_inputs(model, torch.float32, past_length=4, sequence=7)
    cases = {"whole prompt": (long.as_args(), True), "short prompt": (example_inputs(model, torch.float32, past_length=0, sequence=5).as_args(), False),
             "left-padded prompt": ((long.input_ids, padded, long.position_ids, long.past), False),
             "prompt after a cache": (cached.as_args(), False)}
    for case, (args, runs_kernel) in cases.items():
        feed = {name: tensor.numpy() for name, tensor in zip(("input_ids", "attention_mask", "position_ids"), args[:3])}
        feed.update({name: tensor.numpy() for name, tensor in zip(past_names(layers), args[3])})
        ran, logits = _ops_run(path, feed, tmp_path)
        assert ("GroupQueryAttention" in ran) == (runs_kernel and kernel), case
        with torch.no_grad():
            want = wrapper(*args)[0]
        mask = args[1][:, -logits.shape[1]:, None].bool().numpy()  # padded positions' logits are not compared
        np.testing.assert_allclose(np.where(mask, logits, 0), np.where(mask, want.numpy(), 0), rtol=1e-4, atol=1e-4,
                                   err_msg=case)


def test_fp16_whole_prompts_run_group_query_attention(tmp_path, monkeypatch):
    """An fp16 export takes the kernel the same way (its node and the grouped branch in fp16) and
    its logits stay within fp16's tolerance of the fp32 model, with and without the kernel."""
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export import grouped_attention as module
    from moe_compile.export.exporter import export_onnx
    from moe_compile.validate.tolerances import TOLERANCES
    from tiny_models import save_tiny_model

    monkeypatch.setattr(module, "MIN_PROMPT_KERNEL_TOKENS", 6)
    model = save_tiny_model("qwen2_moe", tmp_path / "model")
    path = tmp_path / "model.onnx"
    report = export_onnx(load_moe_model(tmp_path / "model"), path, target="onnxruntime", dtype="fp16").to_json()
    assert report["prompt_attention"]["attention_layers"] == model.config.num_hidden_layers
    layers, wrapper, tolerance = model.config.num_hidden_layers, CausalLMWithCache(model), TOLERANCES["fp16"]
    for sequence, runs_kernel in ((9, True), (5, False)):
        inputs = example_inputs(model, torch.float32, past_length=0, sequence=sequence)
        args = inputs.as_args()
        feed = {name: tensor.numpy() for name, tensor in zip(("input_ids", "attention_mask", "position_ids"), args[:3])}
        feed.update({name: tensor.numpy().astype(np.float16) for name, tensor in zip(past_names(layers), args[3])})
        ran, logits = _ops_run(path, feed, tmp_path)
        assert ("GroupQueryAttention" in ran) == runs_kernel, sequence
        assert logits.dtype == np.float16
        with torch.no_grad():
            want = wrapper(*args)[0].numpy()
        np.testing.assert_allclose(logits.astype(np.float32), want, rtol=tolerance.rtol, atol=tolerance.atol,
                                   err_msg=f"{sequence} tokens")


def test_the_scores_output_is_dropped_where_nothing_reads_it():
    """drop_score_outputs: GroupQueryAttention's fourth output (and its value_info) goes, inside
    branches too; a read one stays."""
    from onnx import TensorProto, helper

    from moe_compile.export.lowering.prompt_attention import drop_score_outputs

    def attention(scores_read: bool):
        node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "", "", "seqlens", "total"],
                                ["out", "key", "value", "scores"], domain="com.microsoft", num_heads=2, kv_num_heads=1)
        kernel = helper.make_graph([node], "kernel", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                                   value_info=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Identity", ["q"], ["other"])], "other", [],
                                  [helper.make_tensor_value_info("other", TensorProto.FLOAT, None)])
        switch = helper.make_node("If", ["flag"], ["result"], then_branch=kernel, else_branch=other)
        outputs = [helper.make_tensor_value_info("result", TensorProto.FLOAT, None)]
        nodes = [switch] + ([helper.make_node("Identity", ["scores"], ["seen"])] if scores_read else [])
        return helper.make_graph(nodes, "main", [], outputs), node

    graph, _ = attention(scores_read=False)
    assert drop_score_outputs(graph) == 1
    (kernel,) = [attr.g for attr in graph.node[0].attribute if attr.name == "then_branch"]
    assert list(kernel.node[0].output) == ["out", "key", "value"] and list(kernel.value_info) == []
    graph, _ = attention(scores_read=True)
    assert drop_score_outputs(graph) == 0
    graph, node = attention(scores_read=False)  # handed out of its branch: the If reads it
    (kernel,) = [attr.g for attr in graph.node[0].attribute if attr.name == "then_branch"]
    kernel.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    assert drop_score_outputs(graph) == 0
