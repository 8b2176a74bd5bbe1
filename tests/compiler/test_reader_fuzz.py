"""Hypothesis fuzzing of the readers of user files: config.json (compiler/loader.py) and the
plan file (compiler/lexi/plan.py). Whatever the bytes, a reader either succeeds or raises a
MoeCompileError (one line, exit 2); any other exception is a bug."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_compile.compiler.lexi.plan import PLAN_SCHEMA, load_plan
from moe_compile.compiler.loader import load_moe_model
from moe_compile.errors import MoeCompileError

FUZZ = dict(deadline=None, database=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


def _edits(keys: list[str]):
    """A few edits of a JSON object: set a known (or new) key to any JSON value, or delete one."""
    key = st.sampled_from(keys) | st.text(max_size=8)
    edit = st.tuples(st.just("set"), key, JSON_VALUES) | st.tuples(st.just("delete"), key, st.none())
    return st.lists(edit, min_size=1, max_size=3)


def _apply(doc: dict, edits) -> dict:
    doc = json.loads(json.dumps(doc))
    for action, key, value in edits:
        if action == "set":
            doc[key] = value
        else:
            doc.pop(key, None)
    return doc


def _accepts_or_refuses(read) -> None:
    try:
        read()
    except MoeCompileError:
        pass


def _write(path: Path, content) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))  # NaN/Infinity as Python writes them


RAW_TEXT = st.text(max_size=64) | st.binary(max_size=64).map(lambda b: b.decode("latin-1")) | st.sampled_from(
    ["[" * 100_000, '{"a": ' * 50_000, "\ud800", "1e999", "NaN", '{"model_type": NaN}', "\x00"])


@pytest.mark.parametrize("model_type", ["qwen2_moe", "deepseek_v3", "gpt_oss", "mixtral"])
@settings(max_examples=40, **FUZZ)
@given(data=st.data())
def test_config_reader_fuzz(model_type, data, tiny_model_dirs):
    source = tiny_model_dirs[model_type]
    config = json.loads((source / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(source, folder)
        if data.draw(st.booleans()):
            _write(folder / "config.json", _apply(config, data.draw(_edits(sorted(config)))))
        else:
            (folder / "config.json").write_bytes(data.draw(RAW_TEXT).encode("utf-8", "surrogatepass"))
        _accepts_or_refuses(lambda: load_moe_model(folder))


@pytest.fixture(scope="module")
def demo_ir():
    return load_moe_model("demo")


def _layer_edits():
    value = JSON_VALUES | st.integers(-3, 20)
    return st.lists(st.tuples(st.integers(0, 10), st.sampled_from(["index", "top_k", "base_top_k", "x"]), value),
                    max_size=3)


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_plan_reader_fuzz(data, demo_ir):
    plan = {"schema": PLAN_SCHEMA, "model": demo_ir.fingerprint,
            "layers": [{"index": spec.index, "base_top_k": spec.base_top_k, "top_k": spec.base_top_k}
                       for spec in demo_ir.layers]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        kind = data.draw(st.sampled_from(["document", "layers", "fingerprint", "raw"]))
        if kind == "document":
            _write(path, _apply(plan, data.draw(_edits(sorted(plan)))))
        elif kind == "fingerprint":
            _write(path, {**plan, "model": _apply(plan["model"], data.draw(_edits(sorted(plan["model"]))))})
        elif kind == "layers":
            for position, key, value in data.draw(_layer_edits()):
                if position < len(plan["layers"]) and isinstance(plan["layers"][position], dict):
                    plan["layers"][position][key] = value
                else:
                    plan["layers"].append(value)
            _write(path, plan)
        else:
            path.write_bytes(data.draw(RAW_TEXT).encode("utf-8", "surrogatepass"))
        _accepts_or_refuses(lambda: load_plan(path, demo_ir))
