"""expand_grouped_moe: each GroupedMoE node becomes the six stage nodes TensorRT's parser turns
into AOT plugin layers; bad nodes are refused by name before anything changes."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from moe_compile.errors import InvalidInput
from moe_compile.export.schema import DOMAIN, OP_TYPE, attribute_values, register_schema
from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference
from moe_compile.plugins.grouped_moe.configs import default_config
from moe_compile.plugins.tensorrt.expand import expand_grouped_moe
from moe_compile.plugins.tensorrt.pipeline import run_stage, triton_launch
from moe_compile.plugins.tensorrt.stages import ATTRIBUTE_TYPES, STAGES, StageLayer, stage_named

E, H, I = 8, 32, 16


def grouped_moe_model(layers: list[dict], dtype=TensorProto.FLOAT, logits_dtype=None) -> onnx.ModelProto:
    """hidden -> GroupedMoE (layer 0) -> GroupedMoE (layer 1) ... -> output; each dict holds the
    node's attributes, plus "biases" / "score_bias" to wire those inputs. The router logits are
    of `dtype` too unless `logits_dtype` says otherwise (DeepSeek's fp32 routers)."""
    register_schema()
    rng = np.random.default_rng(0)
    np_dtype = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}[dtype]

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / shape[-1] ** 0.5).astype(np_dtype), name)

    nodes, inits, hidden = [], [], "hidden"
    for index, spec in enumerate(layers):
        spec = dict(spec)
        names = [f"w_gate_up_{index}", f"w_down_{index}"]
        inits += [weight(names[0], E, 2 * I, H), weight(names[1], E, H, I)]
        optional = ["", "", ""]
        if spec.pop("biases", False):
            optional[:2] = [f"b_gate_up_{index}", f"b_down_{index}"]
            inits += [weight(optional[0], E, 2 * I), weight(optional[1], E, H)]
        if spec.pop("score_bias", False):
            optional[2] = f"score_bias_{index}"
            inits.append(weight(optional[2], E))
        inputs = [hidden, "router_logits", *names, *optional]
        while not inputs[-1]:
            inputs.pop()
        output = f"moe_{index}"
        nodes.append(helper.make_node(OP_TYPE, inputs, [output], name=f"moe_layer_{index}", domain=DOMAIN,
                                      plugin_namespace=DOMAIN, plugin_version="1", **spec))
        hidden = output
    graph = helper.make_graph(
        nodes, "moe", [helper.make_tensor_value_info("hidden", dtype, ["T", H]),
                       helper.make_tensor_value_info("router_logits", logits_dtype or dtype, ["T", E])],
        [helper.make_tensor_value_info(hidden, dtype, ["T", H])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])


def attrs_of(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_each_node_becomes_six_stage_nodes_the_checker_accepts():
    sigmoid = attribute_values(GroupedMoEAttributes(top_k=3, scoring="sigmoid", normalize_topk=True, n_group=4,
                                                    topk_group=2, group_scoring="sum_top2"))
    model = grouped_moe_model([{**attribute_values(GroupedMoEAttributes(top_k=2)), "biases": True},
                               {**sigmoid, "score_bias": True}])
    expanded = expand_grouped_moe(model, max_tokens=4096)
    casts = [n for n in expanded.graph.node if n.op_type == "Cast"]
    assert [(n.input[0], attrs_of(n)["to"]) for n in casts] == [("router_logits", TensorProto.FLOAT)] * 2
    nodes = [n for n in expanded.graph.node if n.op_type != "Cast"]
    assert [n.op_type for n in expanded.graph.node] == (["Cast"] + [stage.plugin for stage in STAGES]) * 2
    assert [n.name for n in nodes[:6]] == [f"moe_layer_0/{stage.plugin}" for stage in STAGES]
    assert {n.domain for n in nodes} == {"moe_compile"}
    assert nodes[5].output == ["moe_0"] and nodes[11].output == ["moe_1"]  # the layers' outputs keep their names
    assert nodes[6].input[:2] == [casts[1].output[0], "moe_0"]
    for node in nodes:
        values = attrs_of(node)
        assert (values["plugin_namespace"], values["plugin_version"], values["aot"]) == (b"moe_compile", b"1", 1)
        assert set(values) == {*ATTRIBUTE_TYPES, "plugin_namespace", "plugin_version", "aot"}
    second = attrs_of(nodes[6])
    assert (second["top_k"], second["scoring"], second["n_group"], second["has_score_bias"]) == (3, b"sigmoid", 4, 1)
    assert second["block_m"] == default_config(4096, E, 3).BLOCK_M and second["num_experts"] == E
    assert (second["hidden_size"], second["inter_size"], second["has_gate_up_bias"]) == (H, I, 0)
    layer = StageLayer.from_node_attributes({k: v.decode() if isinstance(v, bytes) else v
                                             for k, v in attrs_of(nodes[0]).items()})
    assert layer.has_gate_up_bias and layer.has_down_bias and not layer.has_score_bias
    stand_ins = {init.name: init for init in expanded.graph.initializer if init.name.endswith("_absent")}
    assert sorted(stand_ins) == ["moe_layer_0/score_bias_absent", "moe_layer_1/b_down_absent",
                                 "moe_layer_1/b_gate_up_absent"]
    assert all(list(init.dims) == [1] and init.data_type == TensorProto.FLOAT for init in stand_ins.values())
    onnx.checker.check_model(expanded, full_check=True)


def test_stand_ins_take_the_weights_dtype():
    model = expand_grouped_moe(grouped_moe_model([attribute_values(GroupedMoEAttributes(top_k=2))],
                                                 dtype=TensorProto.FLOAT16))
    assert {i.data_type for i in model.graph.initializer if i.name.endswith("_absent")} == {TensorProto.FLOAT16}
    onnx.checker.check_model(model, full_check=True)


def test_fp32_router_logits_in_an_fp16_model():
    """DeepSeek's router runs in fp32 in a 16-bit model: the node and its expansion type-check,
    and the stages compute the layer (Route reads fp32 logits either way)."""
    attrs = GroupedMoEAttributes(top_k=3, scoring="sigmoid", normalize_topk=True, n_group=4, topk_group=2,
                                 group_scoring="sum_top2")
    model = grouped_moe_model([{**attribute_values(attrs), "score_bias": True}], dtype=TensorProto.FLOAT16,
                              logits_dtype=TensorProto.FLOAT)
    onnx.checker.check_model(model, full_check=True)
    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    expanded = expand_grouped_moe(model)
    onnx.checker.check_model(expanded, full_check=True)
    g = torch.Generator().manual_seed(0)
    feeds = {"hidden": torch.randn(5, H, generator=g).half(), "router_logits": torch.randn(5, E, generator=g)}
    got = run_expanded(expanded, feeds)["moe_0"]
    want = grouped_moe_reference(feeds["hidden"], feeds["router_logits"], weights["w_gate_up_0"],
                                 weights["w_down_0"], attrs, score_bias=weights["score_bias_0"])
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_a_model_without_grouped_moe_is_returned_unchanged():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert expand_grouped_moe(model) is model and model.SerializeToString() == before


@pytest.mark.parametrize("change, message", [
    ({"activation": "relu_glu"}, "activation 'relu_glu' is not one of"),
    ({"scoring": "softplus"}, "scoring 'softplus' is not one of"),
    ({"top_k": E + 1}, rf"top_k={E + 1} is outside 1..{E}"),
    ({"top_k": 0}, rf"top_k=0 is outside 1..{E}"),
    ({"n_group": 3, "topk_group": 1}, "n_group=3 does not divide the 8 experts"),
    ({"n_group": 4, "topk_group": 5}, "topk_group=5 is outside 1..n_group=4"),
    ({"n_group": 4, "topk_group": 1, "top_k": 3}, r"top_k=3 is outside 1..2 \(group-limited routing leaves 2"),
    ({"group_scoring": "mean"}, "group_scoring 'mean' is not one of"),
    ({"scoring": "sigmoid"}, "sigmoid routing without group-limited routing gave wrong results in the Triton kernels"),
])
def test_unsupported_attributes_are_refused_by_node_before_any_change(change, message):
    good = attribute_values(GroupedMoEAttributes(top_k=2))
    model = grouped_moe_model([good, {**good, **change}])
    before = model.SerializeToString()
    with pytest.raises(InvalidInput, match=rf"^node 'moe_layer_1': {message}"):
        expand_grouped_moe(model)
    assert model.SerializeToString() == before


def test_weights_without_a_static_shape_are_refused():
    model = grouped_moe_model([attribute_values(GroupedMoEAttributes(top_k=2))])
    weights = model.graph.initializer.pop(0)  # w_gate_up becomes a graph input of unknown experts
    model.graph.input.append(helper.make_tensor_value_info(weights.name, TensorProto.FLOAT, ["E", 2 * I, H]))
    with pytest.raises(InvalidInput, match=r"^node 'moe_layer_0': w_gate_up needs a static 3-d shape"):
        expand_grouped_moe(model)


def run_expanded(model: onnx.ModelProto, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Evaluate an expanded model's nodes in order, the stage nodes in Triton's interpreter: each
    node's layer from its attributes, its stage from its op_type, its tensors by the node's input
    names; the router logits' Cast to fp32 with torch."""
    values = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    values.update(feeds)
    for node in model.graph.node:
        if node.op_type == "Cast":
            assert attrs_of(node)["to"] == TensorProto.FLOAT
            values[node.output[0]] = values[node.input[0]].float()
            continue
        stage = stage_named(node.op_type)
        layer = StageLayer.from_node_attributes({k: v.decode() if isinstance(v, bytes) else v
                                                 for k, v in attrs_of(node).items()})
        names = dict(zip(stage.inputs, node.input, strict=True)) | dict(zip(stage.outputs, node.output, strict=True))
        tensors = {name: values[onnx_name] for name, onnx_name in names.items() if onnx_name in values}
        run_stage(layer, stage, tensors, feeds["hidden"].dtype, triton_launch)
        values.update({names[name]: tensors[name] for name in stage.outputs})
    return values


@pytest.mark.parametrize("tokens", [1, 3, 50])  # 50: four route chunks at E = 8
def test_the_expanded_stage_nodes_compute_the_layers(tokens):
    """Two chained layers (biases; sigmoid group-limited routing with a score bias), a NaN token."""
    first = GroupedMoEAttributes(top_k=2, activation="gelu_glu")
    second = GroupedMoEAttributes(top_k=3, scoring="sigmoid", normalize_topk=True, routed_scaling=2.5, n_group=4,
                                  topk_group=2, group_scoring="sum_top2")
    model = grouped_moe_model([{**attribute_values(first), "biases": True},
                               {**attribute_values(second), "score_bias": True}])
    weights = {init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in model.graph.initializer}
    g = torch.Generator().manual_seed(tokens)
    feeds = {"hidden": torch.randn(tokens, H, generator=g), "router_logits": torch.randn(tokens, E, generator=g)}
    feeds["hidden"][tokens // 2, 1] = float("nan")
    values = run_expanded(expand_grouped_moe(model), feeds)

    def layer(index, attrs, hidden, **optional):
        return grouped_moe_reference(hidden, feeds["router_logits"], weights[f"w_gate_up_{index}"],
                                     weights[f"w_down_{index}"], attrs,
                                     **{name: weights[f"{name}_{index}"] for name in optional})

    want = layer(1, second, layer(0, first, feeds["hidden"], b_gate_up=1, b_down=1), score_bias=1)
    got = values["moe_1"]
    assert torch.equal(got.isnan(), want.isnan()) and got[tokens // 2].isnan().all()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0,
                               atol=2e-5 * want.nan_to_num().abs().max().item())


def test_an_expert_matrix_past_int32_is_refused():
    """TensorRT passes the plugins' ints as int32: one expert's gate_up stride must fit in one."""
    model = grouped_moe_model([attribute_values(GroupedMoEAttributes(top_k=2))])
    del model.graph.initializer[:2]  # the weights become typed graph inputs of a huge shape
    model.graph.input.extend([helper.make_tensor_value_info("w_gate_up_0", TensorProto.FLOAT, [E, 2 * 65536, 16384]),
                              helper.make_tensor_value_info("w_down_0", TensorProto.FLOAT, [E, 16384, 65536])])
    before = model.SerializeToString()
    with pytest.raises(InvalidInput, match=r"^node 'moe_layer_0': one expert's gate_up matrix has 2147483648"):
        expand_grouped_moe(model)
    assert model.SerializeToString() == before
