"""Parity fuzzing of whole tiny models: a per-layer top-k plan (any k the layer allows) is
exported for a target, and hypothesis draws the inputs (batch, prompt length up to the
model's context, token ids) for a prefill and a decode step through ONNX Runtime and the
PyTorch reference. CI: two model/target pairs at one seeded plan; the slow suite: every
exportable tiny model, both targets, plans drawn by hypothesis."""

import functools
import random
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_compile.compiler.loader import load_moe_model
from moe_compile.export.decoder import decoder_inputs, empty_past
from moe_compile.compiler.compiled import compiled_model
from moe_compile.export.exporter import export_onnx
from moe_compile.validate.compare import compare_outputs
from moe_compile.validate.runners import OnnxRuntimeRunner, TorchRunner
from moe_compile.validate.tolerances import TOLERANCES

EXPORTABLE = ["qwen2_moe", "qwen3_moe", "olmoe", "mixtral", "deepseek_v3", "gpt_oss"]
FUZZ = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
_EXPORTS = Path(tempfile.mkdtemp(prefix="moe-compile-model-fuzz-"))


@functools.cache
def _runners(folder: Path, target: str, top_k: tuple[tuple[int, int], ...]):
    ir = load_moe_model(folder)
    path = _EXPORTS / f"{folder.name}-{target}-{'-'.join(str(k) for _, k in top_k)}.onnx"
    export_onnx(ir, path, target=target, top_k=dict(top_k))
    model, _ = compiled_model(ir, "fp32", dict(top_k))
    return TorchRunner(model), OnnxRuntimeRunner(path, threads=1), model


def _plan(folder: Path, rng) -> tuple[tuple[int, int], ...]:
    """Any k per layer, 1 to the experts the layer can choose from."""
    return tuple((spec.index, rng.randint(1, spec.attributes.eligible_experts(spec.num_experts)))
                 for spec in load_moe_model(folder).layers)


def _check(runners, batch: int, prompt: int, seed: int, same_token: bool) -> None:
    reference, candidate, model = runners
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1 if same_token else prompt), generator=generator)
    ids = ids.expand(batch, prompt).contiguous()
    feed = decoder_inputs(model, ids, empty_past(model, batch, model.dtype)).as_feed(reference.num_layers)
    expected = reference.infer(feed)
    steps = [(feed, expected)]
    present = tuple(torch.from_numpy(expected[name]) for name in reference.output_names[1:])
    next_ids = torch.from_numpy(expected["logits"][:, -1].argmax(-1))[:, None]
    decode = decoder_inputs(model, next_ids, present).as_feed(reference.num_layers)
    steps.append((decode, reference.infer(decode)))
    for step_feed, step_expected in steps:
        diffs = compare_outputs(step_expected, candidate.infer(step_feed), TOLERANCES["fp32"], reference.output_names)
        assert all(d.passed for d in diffs), [d for d in diffs if not d.passed][:2]


INPUTS = dict(batch=st.integers(1, 3), prompt=st.one_of(st.just(1), st.integers(1, 126)),
              seed=st.integers(0, 2**31), same_token=st.booleans())


@pytest.mark.parametrize("model_type, target", [("qwen2_moe", "onnxruntime"), ("deepseek_v3", "onnx")])
@settings(max_examples=8, derandomize=True, **FUZZ)
@given(**INPUTS)
def test_tiny_model_matches_pytorch(model_type, target, batch, prompt, seed, same_token, tiny_model_dirs):
    folder = tiny_model_dirs[model_type]
    _check(_runners(folder, target, _plan(folder, random.Random(model_type))), batch, prompt, seed, same_token)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", "onnx"])
@pytest.mark.parametrize("model_type", EXPORTABLE)
@settings(max_examples=6, **FUZZ)
@given(plan_seed=st.integers(0, 2), **INPUTS)
def test_tiny_model_matches_pytorch_slow(model_type, target, plan_seed, batch, prompt, seed, same_token,
                                         tiny_model_dirs):
    folder = tiny_model_dirs[model_type]
    _check(_runners(folder, target, _plan(folder, random.Random(plan_seed))), batch, prompt, seed, same_token)
