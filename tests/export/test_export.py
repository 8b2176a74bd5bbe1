"""ONNX export: every adapter through ONNX Runtime at its base top-k and under a plan, the
TensorRT target's plugin nodes and the failure paths (byte-identical files:
test_pipeline_determinism.py)."""

import json

import onnx
import pytest

from moe_compile.cli import main
from moe_compile.compiler.lexi.cost import ActiveExperts
from moe_compile.compiler.lexi.plan import Budget, make_plan
from moe_compile.compiler.lexi.profile import ProfileOptions, profile_model
from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.exporter import export_onnx
from moe_compile.validate.parity import validate_onnx

EXPORTABLE = ["qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "deepseek_v2", "deepseek_v3", "gpt_oss", "demo"]


def _inspect_json(model_type, tiny_model_dirs) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", "demo" if model_type == "demo" else str(tiny_model_dirs[model_type]), "--json"]) == 0
    return out.getvalue()


def _half_budget_plan(ir, path):
    profile = profile_model(ir, ProfileOptions(batch=1, seq_len=8, draws=1), show_progress=False)
    plan = make_plan(ir, profile, Budget(fraction=0.5), ActiveExperts())
    path.write_text(json.dumps(plan))
    return path


FULL_MATRIX_IN_CI = "qwen2_moe"  # base top-k and a plan, both targets
# softmax top-k as qwen2_moe routes (renormalised: mixtral), so their onnx-target lowering adds nothing in CI
ONNX_TARGET_SLOW = ("qwen3_moe", "olmoe")


def _in_ci(model_type: str, target: str, planned: bool) -> bool:
    """CI: the half-budget plan (per-layer k, the harder case) for every tiny architecture on the
    onnxruntime target, and on the onnx target where its lowering differs from qwen2_moe's; the
    base top-k too for qwen2_moe (the one difference, k per layer, is not the architecture's); the
    demo once. The rest runs in the slow suite (MOE_COMPILE_SLOW=1)."""
    if model_type == "demo":
        return planned and target == "onnxruntime"
    if model_type == FULL_MATRIX_IN_CI:
        return True
    return planned and not (target == "onnx" and model_type in ONNX_TARGET_SLOW)


def _export_cases():
    """Every architecture x target x (base top-k, a half-budget plan); `_in_ci` says which run in CI."""
    for model_type in EXPORTABLE:
        for target in ("onnx", "onnxruntime"):
            for planned, name in ((False, "base_top_k"), (True, "half_budget_plan")):
                in_ci = _in_ci(model_type, target, planned)
                yield pytest.param(model_type, target, planned, id=f"{model_type}-{target}-{name}",
                                   marks=() if in_ci else pytest.mark.slow)


@pytest.mark.parametrize("model_type, target, planned", list(_export_cases()))
def test_export_matches_pytorch(model_type, target, planned, tiny_model_dirs, tmp_path):
    ir = load_moe_model("demo" if model_type == "demo" else tiny_model_dirs[model_type])
    plan = _half_budget_plan(ir, tmp_path / "plan.json") if planned else None
    result = export_onnx(ir, tmp_path / "model.onnx", target=target, plan=plan)
    assert [layer["layer"] for layer in result.report.layers] == [spec.index for spec in ir.layers]
    inspected = json.loads(_inspect_json(model_type, tiny_model_dirs))["layers"]
    assert [{k: v for k, v in layer.items() if k not in ("layer", "top_k")} for layer in result.report.layers] == [
        layer["lowering"][target] for layer in inspected]  # inspect says what export does
    if target == "onnxruntime":  # every registered architecture's experts run in com.microsoft.MoE
        assert {layer["lowered_to"] for layer in result.report.layers} == {"com.microsoft.MoE"}
    if planned:
        assert sum(result.top_k.values()) == round(0.5 * sum(spec.base_top_k for spec in ir.layers))
    report = validate_onnx(ir, tmp_path / "model.onnx", plan=plan, new_tokens=32)
    assert report.passed, report.to_json()
    assert report.generation_identical and report.generated_tokens == 32


def test_tensorrt_target_keeps_one_plugin_node_per_layer(tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs["deepseek_v3"])
    plan = _half_budget_plan(ir, tmp_path / "plan.json")
    export_onnx(ir, tmp_path / "model.onnx", target="tensorrt", plan=plan)
    model = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.op_type == "GroupedMoE"]
    assert [n.domain for n in nodes] == ["moe_compile"] * len(ir.layers)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    planned = {layer["index"]: layer["top_k"] for layer in json.loads(plan.read_text())["layers"]}
    assert [a["top_k"] for a in attrs] == [planned[spec.index] for spec in ir.layers]
    for a in attrs:
        assert (a["plugin_namespace"], a["plugin_version"]) == (b"moe_compile", b"1")
        assert (a["scoring"], a["n_group"], a["topk_group"], a["group_scoring"]) == (b"sigmoid", 4, 2, b"sum_top2")
        assert a["normalize_topk"] == 1 and a["routed_scaling"] == pytest.approx(2.5)
    assert [n.input[6] != "" for n in nodes] == [True] * len(nodes)  # the score-correction bias is wired


def test_tensorrt_target_in_fp16_keeps_deepseeks_fp32_router(tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs["deepseek_v3"])
    export_onnx(ir, tmp_path / "model.onnx", target="tensorrt", dtype="fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "model.onnx"), check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    nodes = [n for n in model.graph.node if n.op_type == "GroupedMoE"]
    assert len(nodes) == len(ir.layers)
    for node in nodes:
        assert types[node.input[1]] == onnx.TensorProto.FLOAT  # router_logits
        assert types[node.input[0]] == types[node.input[2]] == onnx.TensorProto.FLOAT16  # hidden, w_gate_up


@pytest.mark.parametrize("broken, named", [
    ("model.model.layers.1.mlp.w_down", "first diverging MoE layer: 1"),
    ("model.model.norm.weight", "every MoE layer is within tolerance (the largest difference at MoE layer "),
], ids=["an MoE layer", "outside the MoE layers"])
def test_validate_says_where_the_file_diverges(broken, named, tiny_model_dirs, tmp_path, capsys):
    ir = load_moe_model(tiny_model_dirs["olmoe"])
    export_onnx(ir, tmp_path / "model.onnx", target="onnx")
    model = onnx.load(tmp_path / "model.onnx")
    for init in model.graph.initializer:  # break those weights in the file (the final norm: after every MoE layer)
        if init.name == broken:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
            break
    else:
        raise AssertionError(f"no initializer {broken}")
    onnx.save(model, tmp_path / "broken.onnx")
    capsys.readouterr()
    code = main(["validate", str(tiny_model_dirs["olmoe"]), "--onnx", str(tmp_path / "broken.onnx")])
    out, err = capsys.readouterr()
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith(f"moe-compile: validate: {tmp_path / 'broken.onnx'} does not match the PyTorch reference; "
                           + named), line
    assert "moe_output.0" in out and "NO" in out


@pytest.mark.parametrize("case", ["folder", "unwritable", "foreign plan", "onnx of another model"])
def test_bad_export_and_validate_input(case, tiny_model_dirs, tmp_path, capsys):
    model = str(tiny_model_dirs["mixtral"])
    if case == "folder":
        (tmp_path / "m.onnx").mkdir()
        argv, message = ["export", model, "--out", str(tmp_path / "m.onnx")], "is a folder"
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        argv, message = ["export", model, "--out", str(tmp_path / "file" / "m.onnx")], "cannot write --out"
    elif case == "foreign plan":
        ir = load_moe_model(tiny_model_dirs["olmoe"])
        plan = _half_budget_plan(ir, tmp_path / "plan.json")
        argv, message = ["export", model, "--plan", str(plan), "--out", str(tmp_path / "m.onnx")], "was made for another model"
    else:
        export_onnx(load_moe_model(tiny_model_dirs["olmoe"]), tmp_path / "olmoe.onnx", target="onnx")
        argv, message = ["validate", model, "--onnx", str(tmp_path / "olmoe.onnx")], "was exported from another model"
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no model.onnx, no staging folder


def test_the_readme_pipeline_on_the_demo(tmp_path, capsys):
    """`moe-compile demo --budget 0.75 --out demo.onnx`: plan, export, parity, in one command."""
    out = tmp_path / "demo.onnx"
    assert main(["demo", "--budget", "0.75", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "LExI plan: Σk 24 of 32" in stdout and "com.microsoft.MoE" in stdout
    assert "greedy generation of 32 tokens: identical" in stdout
    assert ".staging" not in stdout  # the parity table names the file where it ends up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.lexi-plan.json", "demo.lexi-plan.png", "demo.onnx",
                                                          "demo.onnx.data"]
    assert out.stat().st_size < (tmp_path / "demo.onnx.data").stat().st_size  # the weights are in the .data file


# deepseek_v3: its fp32 router beside fp16 activations; qwen2_moe (plain fp16): the slow suite
@pytest.mark.parametrize("model_type", [pytest.param("qwen2_moe", marks=pytest.mark.slow), "deepseek_v3"])
def test_fp16_export_matches_pytorch_fp16(model_type, tiny_model_dirs, tmp_path):
    ir = load_moe_model(tiny_model_dirs[model_type])
    export_onnx(ir, tmp_path / "model.onnx", target="onnxruntime", dtype="fp16")
    model = onnx.load(tmp_path / "model.onnx")
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # past_key_values.0.key
    report = validate_onnx(ir, tmp_path / "model.onnx")
    assert report.dtype == "fp16" and report.tolerance == {"rtol": 2e-2, "atol": 2e-2}
    assert all(d.passed for d in report.prefill + report.decode), report.to_json()
