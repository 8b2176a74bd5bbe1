"""plugin.py against a stand-in `tensorrt.plugin` (tests/fake_tensorrt_plugin.py), and the AOT
artefact exactly as aot_impl hands it to TensorRT: PTX for sm_90, entry name, launch parameters.

Compiling needs a process without TRITON_INTERPRET=1 (see aot.py), so aot_impl runs in a
subprocess (`dump_aot_impl`), registered through the same stand-in. Tests marked `tensorrt`
register with the real TensorRT where it is installed.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fake_tensorrt_plugin
from moe_compile.errors import BackendUnavailable
from moe_compile.grouped_moe_op import GroupedMoEAttributes
from moe_compile.plugins.tensorrt import plugin
from moe_compile.plugins.tensorrt.aot_kernel import drop_scratch_parameters, entry_parameters
from moe_compile.plugins.tensorrt.stages import ATTRIBUTE_TYPES, GEMM_STAGES, PLUGIN_NAMESPACE, STAGES, StageLayer
from moe_compile.plugins.tensorrt.symbolic import SYM_OPS, Sym, evaluate

TOKEN_COUNTS = (1, 2, 3, 8, 15, 16, 17, 64, 300, 1000, 4096)
LAYER = StageLayer(GroupedMoEAttributes(top_k=8, scoring="sigmoid", normalize_topk=True, routed_scaling=2.5,
                                        n_group=8, topk_group=4, group_scoring="sum_top2"),
                   experts=64, hidden=512, inter=256, block_m=64, has_score_bias=True)
TRT_DTYPES = {"int32": "INT32", "float32": "FP32"}
ACT = {"bfloat16": "BF16", "float16": "FP16", "float32": "FP32"}


def stage_descs(trtp, layer, stage, act="bfloat16"):
    """Input descriptors as TensorRT builds them: symbolic shapes from the upstream stages."""
    launch = layer.launch(stage, Sym.tokens(), fp32=act == "float32", ops=SYM_OPS)
    return [trtp.TensorDesc(shape, ACT[act] if dtype == "act" else TRT_DTYPES[dtype])
            for shape, dtype in launch.inputs.values()]


@pytest.fixture
def trtp(monkeypatch):
    return fake_tensorrt_plugin.install(monkeypatch)


def test_six_plugins_register_with_names_attributes_and_outputs(trtp):
    plugin.register_plugins()
    plugin.register_plugins()  # idempotent: the stand-in refuses a second definition
    assert sorted(trtp.REGISTRY) == sorted(f"{PLUGIN_NAMESPACE}::{stage.plugin}" for stage in STAGES)
    attributes = LAYER.node_attributes()
    for stage in STAGES:
        registered = trtp.REGISTRY[f"{PLUGIN_NAMESPACE}::{stage.plugin}"]
        assert registered.tensors == list(stage.inputs) and registered.attrs == ATTRIBUTE_TYPES
        assert registered.num_outputs == len(stage.outputs) and registered.aot_impl_fn is not None
        outputs = registered.describe(stage_descs(trtp, LAYER, stage), attributes)
        for tokens in TOKEN_COUNTS:
            want = LAYER.launch(stage, tokens, fp32=False).outputs
            assert [tuple(evaluate(d, tokens) for d in out.shape_expr) for out in outputs] == \
                [shape for shape, _ in want.values()], stage.plugin
        assert [out.dtype for out in outputs] == [ACT["bfloat16"] if dtype == "act" else TRT_DTYPES[dtype]
                                                  for _, dtype in want.values()]


def test_autotune_offers_three_activation_dtypes_and_gemm_configs_as_tactics(trtp):
    plugin.register_plugins()
    for stage in STAGES:
        registered = trtp.REGISTRY[f"{PLUGIN_NAMESPACE}::{stage.plugin}"]
        descs = stage_descs(trtp, LAYER, stage)
        [combination] = registered.autotune(descs, LAYER.node_attributes(), ())
        launch = LAYER.launch(stage, 1, fp32=False)
        assert combination.io_types == ["FP32|FP16|BF16" if dtype == "act" else TRT_DTYPES[dtype]
                                        for _, dtype in (*launch.inputs.values(), *launch.outputs.values())]
        configs = LAYER.gemm_configs()
        assert combination.tactics == (list(range(1, len(configs) + 1)) if stage.launch in GEMM_STAGES else None)
    # every GEMM tactic's BLOCK_M divides the layer's alignment, from decode's up to block_m itself
    assert len(configs) >= 2 and all(LAYER.block_m % c.BLOCK_M == 0 for c in configs)
    assert max(c.BLOCK_M for c in configs) == LAYER.block_m and min(c.BLOCK_M for c in configs) < LAYER.block_m


def test_without_tensorrt_registration_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable, match=r"tensorrt.plugin.*TensorRT >= 10\.8"):
        plugin.register_plugins()
    fake_tensorrt_plugin.install(monkeypatch, version="10.7.0")
    with pytest.raises(BackendUnavailable, match=r"TensorRT 10\.7\.0 has no AOT Python plugins"):
        plugin.register_plugins()


def dump_aot_impl(out: str, tactic: int) -> None:
    """In a fresh process: register through the stand-in, call every stage's aot_impl as TensorRT
    does (sm_90: this machine has no GPU to ask) and write what it returns, evaluated for each T."""
    trtp = fake_tensorrt_plugin.install()
    plugin.current_arch = lambda: 90
    plugin.register_plugins()
    result = {}
    for stage in STAGES:
        registered = trtp.REGISTRY[f"{PLUGIN_NAMESPACE}::{stage.plugin}"]
        descs = stage_descs(trtp, LAYER, stage)
        outputs = registered.describe(descs, LAYER.node_attributes())
        name, ptx, params, extra = registered.aot_impl(descs, LAYER.node_attributes(), outputs, tactic)
        Path(out, f"{stage.plugin}.ptx").write_text(ptx)
        result[stage.plugin] = {
            "name": name, "block": evaluate(params.block_x, 1), "shared_mem": params.shared_mem,
            "grids": {t: [evaluate(g, t) for g in (params.grid_x, params.grid_y, params.grid_z)] for t in TOKEN_COUNTS},
            "extra_args": {t: [evaluate(arg.value, t) for arg in extra.values] for t in TOKEN_COUNTS}}
    Path(out, "aot_impl.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def aot_artefacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; sys.path[:0] = sys.argv[1:3]; import test_tensorrt_plugin as t; "
            "t.dump_aot_impl(sys.argv[3], 2)")
    here = Path(__file__).parent
    subprocess.run([sys.executable, "-c", code, str(here.parent), str(here), str(out)], env=env, check=True,
                   capture_output=True)
    return out, json.loads((out / "aot_impl.json").read_text())


def test_aot_impl_hands_tensorrt_sm90_ptx_and_the_plans_launch(aot_artefacts):
    out, result = aot_artefacts
    assert list(result) == [stage.plugin for stage in STAGES]
    gemm_config = LAYER.gemm_configs()[2 - 1]  # tactic 2
    for stage in STAGES:
        got = result[stage.plugin]
        ptx = (out / f"{stage.plugin}.ptx").read_text()
        assert re.search(r"^\.target sm_90a?$", ptx, re.MULTILINE) and got["name"] == stage.kernel
        config = gemm_config if stage.launch in GEMM_STAGES else None
        symbolic = LAYER.launch(stage, Sym.tokens(), fp32=False, ops=SYM_OPS, config=config)
        passed_ints = [n for n, v in symbolic.ints.items() if not (isinstance(v, int) and v == 1)]  # 1: constexpr
        # TensorRT passes inputs, extra ints, outputs, and the PTX declares exactly those
        # (Triton's two scratch pointers are dropped: aot_kernel.drop_scratch_parameters)
        passed = len(symbolic.inputs) + len(passed_ints) + len(symbolic.outputs)
        assert f".visible .entry {got['name']}(" in ptx
        assert len(entry_parameters(ptx, got["name"])) == passed
        for tokens in TOKEN_COUNTS:
            plan = LAYER.plan(tokens, config)
            assert tuple(got["grids"][str(tokens)]) == (*plan.grids()[stage.launch], 1, 1)[:3], (stage.plugin, tokens)
            ints = LAYER.ints(plan)[stage.launch]
            assert got["extra_args"][str(tokens)] == [ints[n] for n in passed_ints], (stage.plugin, tokens)
        if stage.launch in GEMM_STAGES:
            assert got["block"] == gemm_config.num_warps * 32 and "cp.async" in ptx  # pipelined loads


@pytest.mark.tensorrt
def test_real_tensorrt_registers_the_six():
    import tensorrt.plugin as trtp

    plugin.register_plugins()
    for stage in STAGES:
        assert hasattr(getattr(trtp.op, PLUGIN_NAMESPACE), stage.plugin)


PTX_ENTRY = """.visible .entry k(
\t.param .u64 .ptr .global .align 1 k_param_0,
\t.param .u32 k_param_1,
\t.param .u64 .ptr .global .align 1 k_param_2,
\t.param .u64 .ptr .global .align 1 k_param_3
)
.reqntid 128
{
\tld.param.b64 \t%rd1, [k_param_0];
\tld.param.b32 \t%r1, [k_param_1];
\tld.param.b64 \t%rd2, [k_param_2];
\tBODY
}
"""


def test_scratch_parameters_are_dropped_only_when_unread():
    ptx = PTX_ENTRY.replace("BODY", "ret;")
    trimmed = drop_scratch_parameters(ptx, "k", 3)
    assert entry_parameters(trimmed, "k") == entry_parameters(ptx, "k")[:3]
    assert trimmed == ptx.replace(",\n\t.param .u64 .ptr .global .align 1 k_param_3", "")
    with pytest.raises(ValueError, match=r"reads parameters beyond the 2 TensorRT passes: \['k_param_2'\]"):
        drop_scratch_parameters(ptx, "k", 2)
