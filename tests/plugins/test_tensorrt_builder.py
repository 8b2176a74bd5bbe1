"""The TensorRT builder's logic that needs no TensorRT: optimization profiles from the ONNX
inputs, the precision check, the engine's metadata, the inspector summary, the install check."""

import json
import sys
import types

import pytest
import torch
from onnx import TensorProto, helper

from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import BackendUnavailable, InvalidInput
from moe_compile.export.exporter import export_onnx
from moe_compile.onnx_files import read_onnx_graph
from moe_compile.plugins.tensorrt.builder import (
    AxisRange,
    axis_ranges,
    check_precision,
    engine_name,
    graph_inputs,
    metadata_from_engine_name,
    onnx_precision,
    plugin_op_names,
    profile_shapes,
    require_tensorrt,
    summarize_layers,
)
from tiny_models import TINY_CONFIGS, tiny_config


@pytest.fixture(scope="module")
def tensorrt_onnx(tiny_model_dirs, tmp_path_factory):
    """The tiny qwen2_moe exported for TensorRT (GroupedMoE nodes), without its weights."""
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(load_moe_model(tiny_model_dirs["qwen2_moe"]), path, target="tensorrt")
    return read_onnx_graph(path)


def test_profile_of_an_exported_decoder(tensorrt_onnx):
    config = tiny_config("qwen2_moe")
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    shapes = profile_shapes(graph_inputs(tensorrt_onnx), max_batch=4, max_seq=64)
    assert set(shapes) == {value.name for value in graph_inputs(tensorrt_onnx)}
    # batch 1..4 (opt 4), one new token at opt, up to 64 positions of context (31 cached at opt)
    for name in ("input_ids", "position_ids"):
        assert (shapes[name].min, shapes[name].opt, shapes[name].max) == ((1, 1), (4, 1), (4, 64))
    mask = shapes["attention_mask"]
    assert (mask.min, mask.opt, mask.max) == ((1, 1), (4, 32), (4, 64))
    for layer in range(config.num_hidden_layers):
        for kind in ("key", "value"):
            cache = shapes[f"past_key_values.{layer}.{kind}"]
            assert (cache.min, cache.opt, cache.max) == ((1, heads, 0, dim), (4, heads, 31, dim), (4, heads, 63, dim))


def test_context_of_one_token_caches_nothing():
    ranges = axis_ranges(max_batch=1, max_seq=1)
    assert ranges["past_sequence_length"] == AxisRange(0, 0, 0)
    assert ranges["total_sequence_length"] == AxisRange(1, 1, 1)
    with pytest.raises(InvalidInput, match="at least 1"):
        axis_ranges(max_batch=0, max_seq=8)


def _value(name: str, dims: list, elem_type=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, dims)


def test_optimum_axis_names_give_the_range_of_any_input():
    shapes = profile_shapes([_value("hidden", ["batch_size", "sequence_length", 16]),
                             _value("fixed", [2, 3])], max_batch=2, max_seq=8)
    assert set(shapes) == {"hidden"}  # a static input needs no profile
    assert (shapes["hidden"].min, shapes["hidden"].max) == ((1, 1, 16), (2, 8, 16))


def test_an_axis_that_is_not_a_decoder_axis_is_refused():
    with pytest.raises(InvalidInput, match=r"input 'image' axis 2 is dynamic \('height'\) but not a batch"):
        profile_shapes([_value("image", ["batch_size", 3, "height", 224])], max_batch=2, max_seq=8)


def test_one_symbol_for_two_decoder_axes_is_refused():
    inputs = [_value("input_ids", ["b", "s"], TensorProto.INT64),
              _value("attention_mask", ["b", "s"], TensorProto.INT64)]
    with pytest.raises(InvalidInput, match="'s', which also names the sequence_length axis"):
        profile_shapes(inputs, max_batch=2, max_seq=8)


def _graph_model(inputs: list, outputs: list, **metadata):
    model = helper.make_model(helper.make_graph([], "g", inputs, outputs))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_precision_of_the_onnx_file(tensorrt_onnx):
    assert onnx_precision(tensorrt_onnx) == "fp32"
    half = _graph_model([_value("x", [1], TensorProto.FLOAT16)], [_value("y", [1], TensorProto.FLOAT16)])
    assert onnx_precision(half) == "fp16"
    mixed = _graph_model([_value("x", [1], TensorProto.FLOAT16)], [_value("y", [1], TensorProto.BFLOAT16)])
    assert onnx_precision(mixed) is None
    labelled = _graph_model([_value("x", [1])], [_value("y", [1])], **{"moe_compile.dtype": "bf16"})
    assert onnx_precision(labelled) == "bf16"  # moe-compile's own label first


def test_precision_mismatch_is_refused_in_one_line(tmp_path):
    assert check_precision(None, "fp16", tmp_path) == "fp16"
    assert check_precision("bf16", None, tmp_path) == "bf16"  # nothing to contradict
    with pytest.raises(InvalidInput) as refused:
        check_precision("fp16", "fp32", tmp_path / "m.onnx")
    assert "holds fp32 tensors" in str(refused.value) and "export with --dtype fp16" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_engine_name_carries_the_onnx_metadata(tensorrt_onnx):
    metadata = {p.key: p.value for p in tensorrt_onnx.metadata_props}
    assert metadata_from_engine_name(engine_name(tensorrt_onnx)) == metadata
    assert json.loads(metadata_from_engine_name(engine_name(tensorrt_onnx))["moe_compile.top_k"]) == {
        "0": TINY_CONFIGS["qwen2_moe"]["num_experts_per_tok"], "2": TINY_CONFIGS["qwen2_moe"]["num_experts_per_tok"]}
    foreign = _graph_model([_value("x", [1])], [_value("y", [1])])
    assert engine_name(foreign) == "g" and metadata_from_engine_name("g") == {}
    assert metadata_from_engine_name("moe_compile:{not json") == {}


INSPECTOR_SAMPLE = {  # the shape of IEngineInspector's JSON at ProfilingVerbosity.DETAILED
    "Layers": [
        {"Name": "/model/embed_tokens/Gather", "LayerType": "Gather", "ParameterType": "Gather"},
        {"Name": "moe_route_0", "LayerType": "PluginV3", "ParameterType": "PluginV3"},
        {"Name": "moe_gemm_0", "LayerType": "PluginV3", "ParameterType": "PluginV3"},
        {"Name": "moe_route_2", "LayerType": "PluginV3", "ParameterType": "PluginV3"},
        {"Name": "someone_elses_plugin", "LayerType": "PluginV2", "ParameterType": "PluginV2"},
        {"Name": "/lm_head/MatMul", "LayerType": "gemm", "ParameterType": "Matrix Multiply"},
    ],
    "Bindings": ["input_ids", "logits"],
}


def test_inspector_summary_counts_plugin_layers_per_op():
    plugin_ops = {"moe_route_0": "moe_compile::GroupedMoERoute", "moe_route_2": "moe_compile::GroupedMoERoute",
                  "moe_gemm_0": "moe_compile::GroupedMoEGemm"}
    layers, plugins = summarize_layers(INSPECTOR_SAMPLE, plugin_ops)
    assert layers == 6
    assert plugins == {"PluginV2": 1, "moe_compile::GroupedMoEGemm": 1, "moe_compile::GroupedMoERoute": 2}


def test_inspector_summary_with_layer_names_only():
    names_only = {"Layers": ["a", "moe_route_0", "b"], "Bindings": []}
    assert summarize_layers(names_only, {"moe_route_0": "moe_compile::R"}) == (3, {"moe_compile::R": 1})


def test_plugin_ops_are_the_nodes_outside_the_standard_domains(tensorrt_onnx):
    ops = plugin_op_names(tensorrt_onnx)
    moe_layers = [i for i in range(3) if i not in TINY_CONFIGS["qwen2_moe"]["mlp_only_layers"]]
    assert sorted(ops.values()) == ["moe_compile::GroupedMoE"] * len(moe_layers)
    assert all(node.name in ops for node in tensorrt_onnx.graph.node if node.op_type == "GroupedMoE")


@pytest.mark.parametrize("version, message", [
    (None, "build needs TensorRT, which is not installed: pip install 'moe-compile[tensorrt]'"),
    ("10.7.1", "build needs TensorRT >= 10.8, found 10.7.1"),
    ("10.8.0", "build needs an NVIDIA GPU"),
])
def test_tensorrt_check_says_what_to_install(version, message, monkeypatch):
    if version == "10.8.0" and torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU check passes")
    # None in sys.modules makes `import tensorrt` fail; a module with a version stands in for a wheel
    monkeypatch.setitem(sys.modules, "tensorrt", version and types.SimpleNamespace(__version__=version))
    with pytest.raises(BackendUnavailable) as missing:
        require_tensorrt("build")
    assert message in str(missing.value) and "\n" not in str(missing.value)


