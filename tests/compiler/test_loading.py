"""Loading: single and sharded safetensors, the demo, and layer-at-a-time weight streaming."""


import pytest
import torch
from tiny_models import save_tiny_model

from moe_compile.compiler.checkpoint import ReadMeter
from moe_compile.compiler.demo import DEMO_FOLDER, demo_config, training_record
from moe_compile.compiler.loader import load_moe_model


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """An OLMoE-style model, larger than the tiny ones and saved in many small shards."""
    folder = tmp_path_factory.mktemp("sharded")
    model = save_tiny_model("olmoe", folder, num_hidden_layers=4, hidden_size=64, intermediate_size=64)
    model.save_pretrained(folder, max_shard_size="100KB")
    return folder


def test_sharded_checkpoint_is_indexed_across_shards(sharded_dir):
    shards = sorted(sharded_dir.glob("*.safetensors"))
    assert len(shards) > 3 and (sharded_dir / "model.safetensors.index.json").exists()
    ir = load_moe_model(sharded_dir)
    assert [spec.index for spec in ir.layers] == [0, 1, 2, 3]
    weights = ir.layers[3].load_weights()
    assert weights.gate_up.shape == (8, 128, 64) and weights.down.shape == (8, 64, 64)


def test_a_hugging_face_cache_snapshot_loads(sharded_dir, tmp_path):
    """HF's cache: snapshots/<rev>/ holds symlinks to ../../blobs/<hash>; the index names files
    inside the snapshot, so the folder is accepted although its files land outside it."""
    import shutil

    snapshot = tmp_path / "models--org--name" / "snapshots" / "0123abc"
    blobs = tmp_path / "models--org--name" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for number, file in enumerate(sorted(sharded_dir.iterdir())):
        shutil.copy(file, blobs / f"blob{number}")
        (snapshot / file.name).symlink_to(f"../../blobs/blob{number}")
    ir = load_moe_model(snapshot)
    assert ir.fingerprint == load_moe_model(sharded_dir).fingerprint
    assert ir.layers[2].load_weights().gate_up.shape == (8, 128, 64)


def test_inspecting_reads_headers_only(sharded_dir):
    meter = ReadMeter()
    ir = load_moe_model(sharded_dir, meter=meter)
    assert meter.bytes_read == 0
    assert all(spec.parameter_bytes > 0 for spec in ir.layers)


def test_streaming_holds_at_most_one_layer_of_expert_weights(sharded_dir):
    meter = ReadMeter()
    ir = load_moe_model(sharded_dir, meter=meter)
    layer_bytes = []
    for spec in ir.layers:
        weights = spec.load_weights()
        layer_bytes.append(weights.nbytes)
        assert meter.live_bytes == weights.nbytes  # the raw tensors are gone once assembled
        del weights
    assert meter.live_bytes == 0
    assert meter.bytes_read == sum(layer_bytes)  # everything was read, each tensor once
    # Peak: one assembled layer, plus at most one expert's raw tensors while assembling.
    one_expert = max(layer_bytes) // 8
    assert meter.peak_live_bytes <= max(layer_bytes) + one_expert
    assert meter.peak_live_bytes < 2 * max(layer_bytes)


def test_the_meter_sees_a_loader_that_holds_every_layer(sharded_dir):
    """The check above can fail: keeping all layers alive shows up in the peak."""
    meter = ReadMeter()
    ir = load_moe_model(sharded_dir, meter=meter)
    kept = [spec.load_weights() for spec in ir.layers]
    assert meter.peak_live_bytes >= sum(w.nbytes for w in kept) > 3 * max(w.nbytes for w in kept)


def test_demo_is_the_shipped_qwen2_moe_folder():
    first = load_moe_model("demo")
    config = demo_config()
    assert first.path == DEMO_FOLDER and first.model_type == "qwen2_moe" == config["model_type"]
    assert len(first.layers) == config["num_hidden_layers"]
    again = load_moe_model("demo")
    assert again.fingerprint == first.fingerprint
    assert torch.equal(first.layers[2].load_weights().gate_up, again.layers[2].load_weights().gate_up)


def test_demo_is_a_real_moe_within_the_shipping_limits():
    """The issue's floor: >= 8 MoE layers, >= 16 experts, top-4 or more, a shared expert, <= 16 MB."""
    ir = load_moe_model("demo")
    assert len(ir.layers) >= 8
    for spec in ir.layers:
        assert spec.num_experts >= 16 and spec.base_top_k >= 4 and spec.shared_expert is not None
    assert (DEMO_FOLDER / "model.safetensors").stat().st_size <= 16_000_000
    record = training_record()
    assert record["data"]["package"] and record["data"]["version"] and record["data"]["file_list_sha256"]
    assert record["training"]["steps_done"] > 0 and record["training"]["wall_seconds"] > 0
    assert record["tokenizer"]["vocab_size"] <= demo_config()["vocab_size"] and (DEMO_FOLDER / "heldout.txt").is_file()


def test_demo_deepseek_is_the_shipped_deepseek_v3_folder(tmp_path):
    """The second built-in model: dense layer 0, grouped sigmoid routing with a score bias, a shared
    expert, routed scaling; its weights are the ones training.json hashed, and eval on the first
    windows of its held-out text lands near the perplexity recorded over all of them."""
    import hashlib

    from moe_compile.commands.eval import evaluate
    from moe_compile.compiler.demo import demo_model_folder

    folder = demo_model_folder("demo-deepseek")
    ir = load_moe_model("demo-deepseek")
    config = demo_config("demo-deepseek")
    assert ir.path == folder and ir.model_type == "deepseek_v3" == config["model_type"]
    assert [spec.index for spec in ir.layers] == list(range(1, config["num_hidden_layers"]))  # layer 0 dense
    attributes = ir.layers[0].attributes
    assert attributes.scoring == "sigmoid" and attributes.n_group > 1 and attributes.routed_scaling != 1
    assert ir.layers[0].shared_expert is not None
    record = training_record("demo-deepseek")
    weights = (folder / "model.safetensors").read_bytes()
    assert len(weights) <= 20_000_000 and hashlib.sha256(weights).hexdigest() == record["weights_sha256"]
    text = tmp_path / "start.txt"
    text.write_text((folder / "heldout.txt").read_text(encoding="utf-8")[:6000], encoding="utf-8")
    result = evaluate("demo-deepseek", plan=None, text=text)
    assert result.tokens >= 4 * 127 and result.perplexity == pytest.approx(record["held_out"]["perplexity"], rel=0.5)
