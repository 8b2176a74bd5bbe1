"""`moe-compile eval --onnx`: the perplexity of the exported artefact itself, in ONNX Runtime."""

import json

import onnx
import pytest

from moe_compile.cli import main
from moe_compile.compiler.demo import DEMO_FOLDER


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A plan for the demo, its onnxruntime-target export, and a short held-out text."""
    root = tmp_path_factory.mktemp("eval_onnx")
    plan, model = root / "plan.json", root / "model.onnx"
    assert main(["plan", "--sum-k", "12", "--batch", "1", "--seq-len", "8", "--draws", "1", "--out", str(plan)]) == 0
    assert main(["export", "demo", "--plan", str(plan), "--target", "onnxruntime", "--out", str(model)]) == 0
    text = root / "short.txt"
    text.write_text((DEMO_FOLDER / "heldout.txt").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    return plan, model, text


def _eval(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_export_scores_what_the_planned_pytorch_model_scores(planned, capsys):
    plan, model, text = planned
    code, out, err = _eval(capsys, "demo", "--onnx", str(model), "--text", str(text), "--json")
    assert code == 0 and err == ""
    exported = json.loads(out)
    reference = json.loads(_eval(capsys, "demo", "--plan", str(plan), "--text", str(text), "--json")[1])
    base = json.loads(_eval(capsys, "demo", "--text", str(text), "--json")[1])
    assert exported["tokens"] == reference["tokens"] > 0
    assert exported["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-4)
    assert abs(exported["perplexity"] - base["perplexity"]) > 1e-3  # the plan's top-k is what the file runs


def test_stepwise_scores_what_the_prompt_scores(planned, capsys):
    """One token at a time through the KV cache: the same tokens and the same perplexity as whole
    windows (an fp32 file computes both ways alike), from a loop of 128 steps per window."""
    _, model, text = planned
    prompt = json.loads(_eval(capsys, "demo", "--onnx", str(model), "--text", str(text), "--json")[1])
    code, out, err = _eval(capsys, "demo", "--onnx", str(model), "--text", str(text), "--stepwise", "--json")
    assert code == 0 and err == ""
    stepwise = json.loads(out)
    assert stepwise["tokens"] == prompt["tokens"] > 0
    assert stepwise["perplexity"] == pytest.approx(prompt["perplexity"], rel=1e-4)


def _with_metadata(source, out, **changes) -> str:
    model = onnx.load(str(source), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, str(out))
    return str(out)


@pytest.mark.parametrize("case, message", [
    ("both", "eval takes --plan or --onnx, not both"),
    ("stepwise without onnx", "--stepwise scores an ONNX file one token at a time: give --onnx FILE"),
    ("another model", "was exported from another model"),
    ("tensorrt target", "is a tensorrt-target export"),
    ("bf16", "is bf16, which ONNX Runtime on the CPU does not run"),
    ("not onnx", "is not an ONNX model"),
])
def test_eval_onnx_refuses_what_it_cannot_score_in_one_line(case, message, planned, capsys, tmp_path):
    plan, model, text = planned
    bad = tmp_path / "bad.onnx"
    args = {
        "both": lambda: ["--plan", str(plan), "--onnx", str(model)],
        "stepwise without onnx": lambda: ["--stepwise"],
        "another model": lambda: ["--onnx", _with_metadata(model, bad, **{"moe_compile.model_sha256": "0" * 64})],
        "tensorrt target": lambda: ["--onnx", _with_metadata(model, bad, **{"moe_compile.target": "tensorrt"})],
        "bf16": lambda: ["--onnx", _with_metadata(model, bad, **{"moe_compile.dtype": "bf16"})],
        "not onnx": lambda: ["--onnx", str(text)],
    }[case]()
    code, out, err = _eval(capsys, "demo", *args, "--text", str(text))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_eval_over_the_size_limit_runs_layer_by_layer_with_the_same_result(planned, capsys, monkeypatch):
    """Over LOADED_MAX_BYTES (lowered here below the demo's size) eval scores the layer-by-layer
    model: the one built, and the same perplexity as the loaded model, with a plan and without."""
    import moe_compile.commands.eval as eval_command
    import moe_compile.compiler.layered_model as layered

    plan, _, text = planned
    loaded = {name: json.loads(_eval(capsys, "demo", *args, "--text", str(text), "--json")[1])
              for name, args in (("plan", ("--plan", str(plan))), ("base", ()))}
    built = []
    monkeypatch.setattr(layered, "LOADED_MAX_BYTES", 1024)
    monkeypatch.setattr(eval_command, "layered_model", lambda *args: built.append(args) or layered.layered_model(*args))
    for name, args in (("plan", ("--plan", str(plan))), ("base", ())):
        code, out, _ = _eval(capsys, "demo", *args, "--text", str(text), "--json")
        assert code == 0
        assert json.loads(out)["perplexity"] == pytest.approx(loaded[name]["perplexity"], rel=1e-5)
    assert len(built) == 2
