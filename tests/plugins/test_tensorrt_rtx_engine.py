"""TensorRT-RTX's builder parses our exported GroupedMoE node into a plugin layer and makes an
engine on a machine with no GPU (issue #7, item 4b; docs/tensorrt-rtx.md).

The plugin it builds with is NOT our TensorRT plugin: RTX has no `tensorrt.plugin` and no AOT
plugins, so our plugin (plugins/tensorrt/plugin.py, six AOT stages running our Triton kernels)
cannot be registered there. The creator is a build-only Python IPluginV3 stand-in defined in
benchmarks/tensorrt_rtx_probe.py (no kernels, nothing runs); what these tests show is that RTX's
parser hands it our node's attributes intact and serialises them into the engine. Our own shape
functions under RTX are tests/plugins/test_tensorrt_rtx_stages.py. The builds run in child
processes. Marked `tensorrt_rtx` (pip install tensorrt-rtx-cu13)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from moe_compile.grouped_moe_op import GroupedMoEAttributes

pytestmark = pytest.mark.tensorrt_rtx

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "tensorrt_rtx_probe.py"
# Every attribute away from its default, so a field the parser drops or mistypes shows.
ATTRS = GroupedMoEAttributes(top_k=3, scoring="sigmoid", normalize_topk=True, routed_scaling=2.5,
                             activation="swiglu_clamp", swiglu_alpha=1.5, swiglu_limit=6.0, n_group=4,
                             topk_group=2, group_scoring="sum_top2")


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("tensorrt_rtx_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def one_node(probe, tmp_path_factory):
    return probe.op_model(tmp_path_factory.mktemp("rtx") / "grouped_moe.onnx", ATTRS)


@pytest.mark.parametrize("target", ["SM89", "SM120"])
def test_an_rtx_engine_with_a_stand_in_creator_for_our_node_builds_without_a_gpu(probe, one_node, tmp_path, target):
    engine_file = tmp_path / "engine.plan"
    result = probe.run_child({"model": str(one_node), "profile": probe.profile(one_node),
                              "fields": probe.grouped_moe_fields(), "target": target,
                              "engine_out": str(engine_file)}, probe.unversioned_library_dir(tmp_path))
    assert result.get("built"), result
    assert result["plugin_v3_layers"] == 1
    assert result["fields_received"] == probe.node_attributes(one_node)
    assert result["fields_received"]["node_GroupedMoE_0"]["activation"] == "swiglu_clamp"
    engine = result["engine"]
    assert engine["accelerators"] == [target.lower()]
    assert engine["plugin_layers"] == 1
    assert engine["holds_plugin_name_and_namespace"] and engine["holds_every_field_name"]
    assert engine_file.stat().st_size == engine["bytes"]


def test_hopper_is_not_an_rtx_target(probe, tmp_path):
    plain = probe.plain_model(tmp_path / "plain.onnx")
    result = probe.run_child({"model": str(plain), "profile": probe.profile(plain), "target": "SM90"})
    assert result["parsed"] and not result["built"]
    assert any("Compute capability is invalid or not supported" in line for line in result["log"])
