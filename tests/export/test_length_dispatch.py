"""export/length_dispatch.py: on a one-projection graph, one-token inputs run the int8-compute
body, longer ones the graph as built, and the prompt body comes back out unchanged; on an exported
decoder, each input size runs the body it should (the node or the sorted experts, no switch at a
decode step) and every body gives PyTorch's logits."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from moe_compile.export.length_dispatch import FEW_TOKENS, ONE_TOKEN, prompt_graph, split_by_length
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
    assert split_by_length(split, int8_steps=True) == (ONE_TOKEN, True)
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
    split_by_length(split, int8_steps=True)
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
    assert split_by_length(model, int8_steps=True) is None
    assert model == before


def test_an_fp32_graph_without_switches_is_left_alone():
    model = _projection_model()
    before = copy.deepcopy(model)
    assert split_by_length(model) is None  # its MatMulNBits computes as built: nothing to split for
    assert model == before


def test_each_input_size_runs_its_body_and_matches_pytorch(tmp_path):
    """An fp32 decoder export: fewer than MIN_SORTED_TOKENS tokens (a decode step of up to three
    sequences) run com.microsoft.MoE with no If but the split's own; more (a prompt, a decode
    step of four sequences) run the sorted experts and the attentions' switches. Logits as PyTorch's."""
    import json

    import torch
    from rich.console import Console

    from moe_compile.commands.export import _lowering_table
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.decoder import CausalLMWithCache, example_inputs, past_names
    from moe_compile.export.exporter import export_onnx
    from moe_compile.export.lowering.ort_support import MIN_SORTED_TOKENS
    from tiny_models import save_tiny_model

    model = save_tiny_model("qwen2_moe", tmp_path / "model")
    path = tmp_path / "model.onnx"
    result = export_onnx(load_moe_model(tmp_path / "model"), path, target="onnxruntime")
    assert result.report.split_by_length == FEW_TOKENS
    console = Console(record=True, width=400)
    console.print(_lowering_table(result.to_json()))  # what `export` prints
    assert f"short inputs ({FEW_TOKENS}) run the first" in " ".join(console.export_text().split())
    layers, wrapper = model.config.num_hidden_layers, CausalLMWithCache(model)
    cases = {"one step": (1, 1, 3), "three sequences' step": (3, 1, 3), "prompt": (1, MIN_SORTED_TOKENS, 0),
             "four sequences' step": (4, 1, 3)}
    for case, (batch, sequence, past) in cases.items():
        inputs = example_inputs(model, torch.float32, batch=batch, past_length=past, sequence=sequence)
        args = inputs.as_args()
        feed = {name: tensor.numpy() for name, tensor in zip(("input_ids", "attention_mask", "position_ids"), args[:3])}
        feed.update({name: tensor.numpy() for name, tensor in zip(past_names(layers), args[3])})
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / case.replace(" ", "_"))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], feed)[0]
        with open(session.end_profiling()) as events:
            ran = [event["args"]["op_name"] for event in json.load(events)
                   if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
        short = batch * sequence < MIN_SORTED_TOKENS
        assert ("MoE" in ran) == short, case
        assert ran.count("If") == (1 if short else 1 + layers), case  # the split's If; a prompt's attention switches
        with torch.no_grad():
            want = wrapper(*args)[0].numpy()
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4, err_msg=case)
