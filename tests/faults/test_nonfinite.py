"""Non-finite weights and numbers are refused where they enter (moe_compile/finite.py), with
the tensor or layer named: before, `profile` wrote NaN into profile.json, `plan` ended in a
traceback, `--solver ga` wrote a plan, and `eval --json` printed `{"perplexity": NaN}`."""

import json
import math

import pytest
import torch
from fault_helpers import altered_model, snapshot

from moe_compile.errors import InvalidInput

EXPERT = "model.layers.0.mlp.experts.3.up_proj.weight"
ATTENTION = "model.layers.1.self_attn.q_proj.weight"


def _poison(name: str, value: float):
    def edit(weights):
        weights[name][0, 1] = value

    return edit


@pytest.fixture(scope="module")
def nan_expert(tiny_model_dirs, tmp_path_factory):
    return altered_model(tiny_model_dirs["qwen2_moe"], tmp_path_factory.mktemp("nan") / "model",
                         tensors=_poison(EXPERT, math.nan))


@pytest.mark.parametrize("argv", [
    ["profile", "{model}", "--out", "{out}/profile.json"],
    ["plan", "{model}", "--budget", "0.75", "--out", "{out}/plan.json"],
    ["plan", "{model}", "--budget", "0.75", "--solver", "ga", "--out", "{out}/plan.json"],
], ids=["profile", "plan", "plan-ga"])
def test_nan_expert_weight_is_named_and_nothing_written(argv, nan_expert, cli, tmp_path):
    before = snapshot(tmp_path)
    outcome = cli(*(arg.format(model=nan_expert, out=tmp_path) for arg in argv))
    outcome.refused(f"tensor '{EXPERT}'", "non-finite")
    assert outcome.stdout == ""
    assert snapshot(tmp_path) == before


def test_infinite_attention_weight_is_named_by_export(tiny_model_dirs, cli, tmp_path):
    """A tensor outside the MoE layers enters with the whole model (export, eval, validate)."""
    model = altered_model(tiny_model_dirs["qwen2_moe"], tmp_path / "model", tensors=_poison(ATTENTION, math.inf))
    outcome = cli("export", model, "--out", tmp_path / "out" / "model.onnx")
    outcome.refused(f"tensor '{ATTENTION}'")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nan_sensitivity_in_a_saved_profile_is_refused(tiny_model_dirs, cli, tmp_path):
    profile = tmp_path / "profile.json"
    assert cli("profile", tiny_model_dirs["qwen2_moe"], "--draws", "1", "--out", profile).code == 0
    doc = json.loads(profile.read_text())
    doc["layers"][1]["sensitivity"]["1"] = math.nan
    profile.write_text(json.dumps(doc))
    outcome = cli("plan", tiny_model_dirs["qwen2_moe"], "--profile", profile, "--draws", "1", "--budget", "0.75",
                  "--out", tmp_path / "plan.json")
    outcome.refused(f"MoE layer {doc['layers'][1]['index']}", "Δ(k=1) is nan")
    assert not (tmp_path / "plan.json").exists()


def test_a_perplexity_that_overflows_is_refused_not_printed():
    from moe_compile.validate.perplexity import perplexity

    def overflowing(input_ids):
        logits = torch.zeros(*input_ids.shape, 8)
        logits[..., 0] = math.inf
        return logits

    with pytest.raises(InvalidInput, match="perplexity over 14 tokens: the mean next-token loss is nan"):
        perplexity(overflowing, torch.ones(2, 8, dtype=torch.long), vocab_size=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nonfinite_values_are_counted_in_every_chunk(monkeypatch, dtype):
    """The count is taken a chunk at a time (finite.py: a whole isfinite of a bf16 embedding was
    a streamed export's peak); values at the first and last element and across a chunk's edge
    are all counted, in a tensor that is not a whole number of chunks."""
    import moe_compile.finite as finite

    monkeypatch.setattr(finite, "_CHUNK_ELEMENTS", 7)
    tensor = torch.ones(5, 9, dtype=dtype)
    flat = tensor.view(-1)
    for index, value in ((0, math.nan), (6, math.inf), (7, -math.inf), (44, math.nan)):
        flat[index] = value
    assert finite.nonfinite_count(tensor) == 4
    assert finite.nonfinite_count(tensor.t()) == 4  # not contiguous
    assert finite.nonfinite_count(torch.ones(3, dtype=dtype)) == 0
    # the largest finite values, whose plain sum would overflow, are finite
    extremes = torch.full((40,), torch.finfo(dtype).max, dtype=dtype)
    extremes[::2] = -torch.finfo(dtype).max
    assert finite.nonfinite_count(extremes) == 0
    extremes[33] = -math.inf
    assert finite.nonfinite_count(extremes) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_nonfinite_value_is_found_wherever_it_sits(dtype):
    """The chunk check takes each chunk's min and max (finite.py): a single NaN or infinity is
    found at every position of a vectorised reduction, its first lanes, its middle and its tail."""
    from moe_compile.finite import nonfinite_count

    size = 10007  # not a multiple of any vector width
    for index in (0, 1, 7, 15, 16, 31, 63, 64, 1000, size - 17, size - 2, size - 1):
        for value in (math.nan, math.inf, -math.inf):
            tensor = torch.ones(size, dtype=dtype)
            tensor[index] = value
            assert nonfinite_count(tensor) == 1, (index, value)
    assert nonfinite_count(torch.randn(size).to(dtype)) == 0
