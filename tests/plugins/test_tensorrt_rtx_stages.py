"""A real TensorRT builder (TensorRT-RTX, no GPU needed) accepts the six-stage expansion of an
exported decoder and evaluates the stages' shape expressions, built through its IExprBuilder, to
what LaunchPlan computes with ints (benchmarks/tensorrt_rtx_stages.py; docs/tensorrt-rtx.md).
The stage plugins are build-only Python creators (RTX has no tensorrt.plugin, so our AOT plugin
cannot be registered); their output shapes are our dimension_exprs/stages code, their kernels
absent. Marked `tensorrt_rtx` (pip install tensorrt-rtx-cu13)."""

import copy
import importlib
import sys
from pathlib import Path

import onnx
import pytest

from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.exporter import export_onnx
from moe_compile.export.schema import OP_TYPE
from moe_compile.plugins.tensorrt.stages import STAGES
from tiny_models import save_tiny_model

pytestmark = pytest.mark.tensorrt_rtx

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
# deepseek_v3: score bias, group-limited routing, top_k = 3 over 8 experts (min(slots, experts)
# switches at T = 3); deepseek_v3 in fp16: half-precision activations through every stage beside
# its fp32 router logits; qwen2_moe in fp16 (softmax routing, shared expert): the slow suite.
MODELS = [("deepseek_v3", "fp32"), pytest.param(("qwen2_moe", "fp16"), marks=pytest.mark.slow), ("deepseek_v3", "fp16")]


@pytest.fixture(scope="module")
def rtx_stages():
    """benchmarks/tensorrt_rtx_stages.py, which imports its neighbour tensorrt_rtx_probe.py."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("tensorrt_rtx_stages")
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in ("tensorrt_rtx_stages", "tensorrt_rtx_probe"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module", params=MODELS, ids=["deepseek_v3-fp32", "qwen2_moe-fp16", "deepseek_v3-fp16"])
def exported(request, tmp_path_factory):
    model_type, dtype = request.param
    root = tmp_path_factory.mktemp("rtx_stages")
    save_tiny_model(model_type, root / "model")
    export_onnx(load_moe_model(root / "model"), root / "model.onnx", target="tensorrt", dtype=dtype)
    return root / "model.onnx"


@pytest.fixture(scope="module")
def checked(rtx_stages, exported, tmp_path_factory):
    work = tmp_path_factory.mktemp("rtx_stages_build")
    model, layers, act = rtx_stages.expanded_model(exported, work / "expanded.onnx")
    return rtx_stages.build_and_compare(model, layers, act, work), layers, act


def grouped_moe_nodes(path: Path) -> list[str]:
    return [node.name for node in onnx.load(path, load_external_data=False).graph.node if node.op_type == OP_TYPE]


def test_our_expansion_builds_with_six_stand_in_plugin_layers_per_grouped_moe_node(checked, exported):
    result, _, _ = checked
    nodes = grouped_moe_nodes(exported)
    assert len(nodes) >= 2, nodes
    assert result["parsed"] and not result["parser_errors"], result
    assert result["plugin_layers"] == [f"{node}/{stage.plugin}" for node in nodes for stage in STAGES]
    assert result["engine_bytes"], result["log"]


def test_tensorrt_rtx_evaluates_our_stage_shape_exprs_as_launch_plan_does(checked, rtx_stages, exported):
    result, layers, _ = checked
    assert result["mismatches"] == []
    # every plugin configured once per optimization profile, and its output shapes reached
    # TensorRT as expressions of T, not constants
    assert len(result["configured"]) == 6 * len(grouped_moe_nodes(exported)) * len(rtx_stages.PROFILES)
    assert all(result["symbolic_output_dims"].get(stage.plugin) for stage in STAGES), result["symbolic_output_dims"]
    # T on both sides of the route's chunk and of min(slots, experts)
    layer = next(iter(layers.values()))
    block_t, switch = layer.plan(1).block_t, -(-layer.experts // layer.attrs.top_k)
    tokens = result["tokens_checked"]
    assert min(tokens) < switch <= max(tokens) and min(tokens) <= block_t < max(tokens)


def test_a_shape_off_by_one_is_a_mismatch(checked, rtx_stages):
    """The comparison can fail: one dimension TensorRT reported, changed, is named."""
    result, layers, act = checked
    record = copy.deepcopy(next(r for r in result["configured"] if r["stage"] == "GroupedMoEScatter"))
    assert rtx_stages.mismatches([record], layers, act) == []
    record["max"][-1][0] += 1  # sorted_ids at the profile's largest T
    tokens = record["max"][0][0] // layers[record["node"]].attrs.top_k  # topk_ids holds T * top_k
    assert [line.split(":")[0] for line in rtx_stages.mismatches([record], layers, act)] == \
        [f"{record['node']} max T={tokens}"]
