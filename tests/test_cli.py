"""`moe-compile inspect` and the command-line surface."""

import importlib.util
import json
import subprocess
import sys

import pytest

from moe_compile.cli import main
from moe_compile.compiler.adapters import supported_model_types
from moe_compile.compiler.demo import DEMO_FOLDER, demo_config
from tiny_models import TINY_CONFIGS, tiny_config


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_demo_json(capsys):
    code, out, err = run(capsys, "inspect", "--json")
    assert code == 0 and err == ""
    summary = json.loads(out)
    assert summary["model_type"] == "qwen2_moe"
    layers = summary["layers"]
    config = demo_config()
    assert [layer["index"] for layer in layers] == list(range(config["num_hidden_layers"]))
    hidden, inter, shared, experts = (config[k] for k in (
        "hidden_size", "moe_intermediate_size", "shared_expert_intermediate_size", "num_experts"))
    for layer in layers:
        assert (layer["experts"], layer["top_k"], layer["hidden"], layer["intermediate"],
                layer["shared_intermediate"]) == (experts, config["num_experts_per_tok"], hidden, inter, shared)
        # router + routed experts (gate, up, down) + shared expert (gate, up, down) + its gate, fp32
        assert layer["parameter_bytes"] == 4 * (experts * hidden + experts * 3 * hidden * inter
                                                + 3 * hidden * shared + hidden)


def test_inspect_demo_table(capsys):
    code, out, _ = run(capsys, "inspect", "demo")
    assert code == 0
    assert "qwen2_moe: 8 MoE layers of 8" in out
    rows = [line for line in out.splitlines() if "MiB" in line]
    config = demo_config()
    hidden, inter, shared, experts = (config[k] for k in (
        "hidden_size", "moe_intermediate_size", "shared_expert_intermediate_size", "num_experts"))
    layer_bytes = 4 * (experts * hidden + experts * 3 * hidden * inter + 3 * hidden * shared + hidden)
    assert len(rows) == 8 and f"{layer_bytes / 2**20:.1f} MiB" in rows[0]


@pytest.mark.parametrize("model_type", supported_model_types())
def test_inspect_every_tiny_model(model_type, tiny_model_dirs, capsys):
    code, out, err = run(capsys, "inspect", str(tiny_model_dirs[model_type]), "--json")
    assert code == 0, err
    summary = json.loads(out)
    config = tiny_config(model_type)
    assert summary["model_type"] == model_type
    assert summary["num_hidden_layers"] == config.num_hidden_layers
    for layer in summary["layers"]:
        assert layer["top_k"] == TINY_CONFIGS[model_type]["num_experts_per_tok"]
        assert (layer["experts"], layer["hidden"], layer["intermediate"]) == (8, 32, 16)
        assert layer["parameter_bytes"] > 4 * 8 * 3 * 32 * 16  # at least the routed experts in fp32


@pytest.mark.parametrize("model_type", ["deepseek_v2", "deepseek_v3"])
def test_inspect_says_deepseek_routes_in_standard_ops_beside_com_microsoft_moe(model_type, tiny_model_dirs, capsys):
    code, out, err = run(capsys, "inspect", str(tiny_model_dirs[model_type]), "--json")
    assert code == 0, err
    for layer in json.loads(out)["layers"]:
        assert layer["lowering"]["onnxruntime"]["lowered_to"] == "com.microsoft.MoE"
        assert layer["lowering"]["onnxruntime"]["routing"] == "standard ops"
        assert "group-limited routing" in layer["lowering"]["onnxruntime"]["reason"]
        assert layer["lowering"]["onnx"] == {"lowered_to": "standard", "routing": "standard ops"}
        assert layer["lowering"]["tensorrt"] == {"lowered_to": "plugin", "routing": "in the op"}


NO_TENSORRT = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")


@NO_TENSORRT
@pytest.mark.parametrize("command", ["bench --engine e.plan", "bench --backends tensorrt --engine e.plan",
                                     "compile demo", "validate --engine e.plan"])
def test_engine_commands_without_tensorrt_say_what_to_install(command, capsys, tmp_path):
    argv = command.split()
    if argv[0] == "compile":
        argv += ["--out", str(tmp_path / "out.plan")]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "needs TensorRT, which is not installed: pip install" in err
    assert list(tmp_path.iterdir()) == []


@NO_TENSORRT
def test_model_and_out_alone_mean_compile(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--out", str(tmp_path / "engine.plan"))
    assert code == 2 and err.startswith("moe-compile: error: --out engine.plan (a TensorRT engine) needs TensorRT")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "moe_compile", "inspect", str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"moe-compile: error: model folder '{tmp_path / 'missing'}' does not exist "
        "(give a local Hugging Face model folder, or 'demo' or 'demo-deepseek')"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("moe-compile ")


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    """The first part of the demo's held-out text: enough windows to compare, fast to score."""
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text((DEMO_FOLDER / "heldout.txt").read_text(encoding="utf-8")[:12000], encoding="utf-8")
    return path


def test_eval_json(capsys, short_text):
    code, out, err = run(capsys, "eval", "--text", str(short_text), "--json")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["vocab_size"] == demo_config()["vocab_size"] and 1 < result["perplexity"] < result["vocab_size"]


def test_eval_under_a_plan_scores_the_rewritten_model(capsys, short_text, tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["plan", "--sum-k", "12", "--batch", "1", "--seq-len", "8", "--draws", "1", "--out", str(plan)]) == 0
    capsys.readouterr()
    base = json.loads(run(capsys, "eval", "--text", str(short_text), "--json")[1])["perplexity"]
    code, out, err = run(capsys, "eval", "demo", "--plan", str(plan), "--text", str(short_text))
    assert code == 0 and err == "" and f"under {plan}" in out
    planned = json.loads(run(capsys, "eval", "--plan", str(plan), "--text", str(short_text), "--json")[1])
    assert planned["perplexity"] > base  # 12 of 32 active experts cost quality


@pytest.mark.parametrize("plan_text, message", [("{}", "is not a moe-compile plan"), ("[", "is not valid JSON")])
def test_eval_refuses_a_bad_plan_in_one_line(plan_text, message, capsys, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(plan_text)
    code, out, err = run(capsys, "eval", "--plan", str(plan), "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err
