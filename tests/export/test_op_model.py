"""export/op_model.py builds what the exporter builds: one StaticTopKMoE exported by torch.onnx
(with the target's translation and weight pass) and the one-op model agree, ties and NaN rows
included. This keeps the op-level fuzz (tests/validate/test_op_fuzz.py) honest."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from moe_compile.compiler.ir import ExpertWeights
from moe_compile.compiler.rewrite import StaticTopKMoE
from moe_compile.export.exporter import OPSET
from moe_compile.export.lowering import LoweringReport, translation, weight_pass
from moe_compile.export.op_model import grouped_moe_onnx
from moe_compile.grouped_moe_op import GroupedMoEAttributes, grouped_moe_reference

TOKENS, HIDDEN, INTER, EXPERTS = 6, 8, 5, 4


def _module(attrs):
    g = torch.Generator().manual_seed(0)
    router = torch.eye(EXPERTS, HIDDEN)  # logits = the first E hidden values: exact, so ties stay ties
    weights = ExpertWeights(router_weight=router, gate_up=torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g),
                            down=torch.randn(EXPERTS, HIDDEN, INTER, generator=g))
    return StaticTopKMoE(weights, attrs).eval()


def _hidden():
    x = torch.randint(-4, 5, (TOKENS, HIDDEN), generator=torch.Generator().manual_seed(1)) / 4
    x[1, :EXPERTS] = 0.5  # a fully tied row
    x[2, :EXPERTS] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    x[4, 6] = float("nan")  # the NaN rule, after torch.onnx's own passes
    return x


def _run(model_proto, feed):
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.onnx's own pytree deprecation
@pytest.mark.parametrize("attrs", [GroupedMoEAttributes(top_k=2, normalize_topk=True),
                                   GroupedMoEAttributes(top_k=1, scoring="sigmoid", routed_scaling=2.5)],
                         ids=["com.microsoft.MoE", "com.microsoft.MoE routed in standard ops"])
@pytest.mark.parametrize("target", ["onnxruntime", "onnx"])
def test_one_op_model_equals_a_torch_onnx_export(target, attrs, tmp_path):
    module, x = _module(attrs), _hidden()
    report = LoweringReport(target)
    with torch.no_grad():
        exported = torch.onnx.export(
            module, (x,), dynamo=True, opset_version=OPSET, input_names=["x"],
            custom_translation_table={torch.ops.moe_compile.grouped_moe.default: translation(target, report, [0])})
    model_proto = exported.model_proto
    routing = "in the op" if attrs.scoring == "softmax" else "standard ops"
    assert report.layers[0]["lowered_to"] == ("com.microsoft.MoE" if target == "onnxruntime" else "standard")
    assert report.layers[0]["routing"] == (routing if target == "onnxruntime" else "standard ops")
    weight_pass(target)(model_proto)
    from_export = _run(model_proto, {"x": x.numpy()})

    logits = F.linear(x, module.router_weight)
    weights = {"w_gate_up": module.w_gate_up.data, "w_down": module.w_down.data}
    one_op = _run(grouped_moe_onnx(target, attrs, tuple(x.shape), weights, torch.float32),
                  {"hidden": x.numpy(), "router_logits": logits.numpy()})
    expected = grouped_moe_reference(x, logits, attrs=attrs, **weights).numpy()
    for got in (from_export, one_op):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(expected).all(axis=1).tolist() == [i == 4 for i in range(TOKENS)]
