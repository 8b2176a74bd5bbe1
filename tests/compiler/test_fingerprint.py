"""The fingerprint tells another fine-tune of the same config apart: plans, profiles and exports
made for one set of weights are refused, in one line and exit 2, for another."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file
from tiny_models import save_tiny_model

from moe_compile.cli import main
from moe_compile.compiler.loader import load_moe_model

FAST_PROFILE = ["--batch", "1", "--seq-len", "8", "--draws", "1"]


@pytest.fixture(scope="module")
def two_finetunes(tmp_path_factory):
    """The same qwen3_moe config and tensor shapes, different weights; A's plan, profile, export."""
    root = tmp_path_factory.mktemp("finetunes")
    save_tiny_model("qwen3_moe", root / "a", seed=0)
    save_tiny_model("qwen3_moe", root / "b", seed=1)
    made = root / "made"
    made.mkdir()
    assert main(["profile", str(root / "a"), *FAST_PROFILE, "--out", str(made / "profile.json")]) == 0
    assert main(["plan", str(root / "a"), "--sum-k", "4", "--profile", str(made / "profile.json"),
                 "--out", str(made / "plan.json")]) == 0
    _onnx_with_metadata(made / "a.onnx", load_moe_model(root / "a"))
    return root


def _onnx_with_metadata(path, moe_model) -> None:
    """An ONNX file with the metadata export writes for `moe_model` (validate checks it first)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    metadata = {"moe_compile.model_sha256": moe_model.fingerprint["sha256"],
                "moe_compile.weights_sha256": moe_model.fingerprint["weights_sha256"],
                "moe_compile.dtype": "fp32", "moe_compile.target": "onnx",
                "moe_compile.top_k": json.dumps({str(spec.index): spec.base_top_k for spec in moe_model.layers})}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def test_same_structure_other_weights_differ_only_in_the_content_hash(two_finetunes):
    a, b = load_moe_model(two_finetunes / "a"), load_moe_model(two_finetunes / "b")
    assert a.structure == b.structure
    assert a.fingerprint["weights_sha256"] != b.fingerprint["weights_sha256"]
    assert len(a.fingerprint["weights_sha256"]) == 64


def test_content_hash_ignores_sharding_and_metadata(two_finetunes, tmp_path):
    """Two shards with an index, and another header metadata: the same tensors, the same hash."""
    source = two_finetunes / "a"
    folder = tmp_path / "sharded"
    shutil.copytree(source, folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in reversed(shard_names)}, folder / shard, metadata={"x": "y"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, shard_names in shards.items() for name in shard_names}}))
    assert load_moe_model(folder).fingerprint["weights_sha256"] == load_moe_model(source).fingerprint["weights_sha256"]


def test_one_changed_value_changes_the_content_hash(two_finetunes, tmp_path):
    folder = tmp_path / "edited"
    shutil.copytree(two_finetunes / "a", folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"][3] += 1.0  # a tensor outside every MoE layer
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    assert (load_moe_model(folder).fingerprint["weights_sha256"]
            != load_moe_model(two_finetunes / "a").fingerprint["weights_sha256"])


def test_plans_record_the_content_hash(two_finetunes):
    plan = json.loads((two_finetunes / "made" / "plan.json").read_text())
    profile = json.loads((two_finetunes / "made" / "profile.json").read_text())
    expected = load_moe_model(two_finetunes / "a").fingerprint["weights_sha256"]
    assert plan["model"]["weights_sha256"] == expected == profile["model"]["weights_sha256"]


@pytest.mark.parametrize("command", ["inspect --plan", "plan --profile", "export --plan", "validate --onnx"])
def test_made_for_other_weights_is_refused(command, two_finetunes, tmp_path, capsys):
    made, b = two_finetunes / "made", str(two_finetunes / "b")
    argv = {
        "inspect --plan": ["inspect", b, "--plan", str(made / "plan.json")],
        "plan --profile": ["plan", b, "--sum-k", "4", "--profile", str(made / "profile.json"),
                           "--out", str(tmp_path / "plan.json")],
        "export --plan": ["export", b, "--plan", str(made / "plan.json"), "--target", "onnx",
                          "--out", str(tmp_path / "b.onnx")],
        "validate --onnx": ["validate", b, "--onnx", str(made / "a.onnx")],
    }[command]
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("moe-compile: error: ") and "was made for other weights" in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_plan_without_a_content_hash_is_refused(two_finetunes, tmp_path, capsys):
    plan = json.loads((two_finetunes / "made" / "plan.json").read_text())
    del plan["model"]["weights_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(plan))
    assert main(["inspect", str(two_finetunes / "a"), "--plan", str(tmp_path / "old.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "records no content hash of the weights" in err, err
