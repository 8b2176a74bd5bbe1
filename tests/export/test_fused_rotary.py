"""export/fused_rotary.py: RoPE as one com.microsoft.RotaryEmbedding per tensor in ONNX Runtime
exports. The op computes what the model's own function does, the patch is undone on leaving, only
modules with transformers' rotate_half form are patched, calls the op does not fit fall back, and
an export holds two nodes per layer in each body (parity: every export test, and below)."""

import numpy as np
import onnx
import torch

from moe_compile.export.fused_rotary import fused_rotary, rotary
from moe_compile.export.subgraphs import subgraphs
from tiny_models import prompt_logits, save_tiny_model, tiny_model


def _cos_sin(batch: int, length: int, dim: int, seed: int = 0):
    """Per-token cos and sin [B, S, D] with equal halves, as transformers builds them; positions differ per row."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, length, dim // 2, generator=generator) * 50
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def test_the_op_is_the_models_own_rotation_and_the_patch_is_undone():
    from transformers.models.qwen2_moe import modeling_qwen2_moe as module

    model = tiny_model("qwen2_moe")
    original = module.apply_rotary_pos_emb
    q, k = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16)
    cos, sin = _cos_sin(2, 5, 16)
    want = original(q, k, cos, sin)
    with fused_rotary(model) as patched:
        assert patched == 1 and module.apply_rotary_pos_emb is not original
        got = module.apply_rotary_pos_emb(q, k, cos, sin)
        # [B, S, N, D] (unsqueeze_dim 2) is not the op's layout: the model's own function runs
        other_layout = module.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=2)
    assert module.apply_rotary_pos_emb is original
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(rotary(q, cos, sin), want[0])
    for a, b in zip(other_layout, want):
        torch.testing.assert_close(a.transpose(1, 2), b)


def test_models_that_rotate_otherwise_are_left_alone():
    for model_type in ("gpt_oss", "deepseek_v2"):  # half-width cos; a complex rotation
        with fused_rotary(tiny_model(model_type)) as patched:
            assert patched == 0, model_type
    with fused_rotary(tiny_model("qwen2_moe"), enabled=False) as patched:
        assert patched == 0


def test_an_onnxruntime_export_holds_one_node_per_tensor(tmp_path):
    from moe_compile.compiler.loader import load_moe_model
    from moe_compile.export.exporter import export_onnx

    model = save_tiny_model("qwen2_moe", tmp_path / "model")
    ir = load_moe_model(tmp_path / "model")
    fused, standard = tmp_path / "fused.onnx", tmp_path / "standard.onnx"
    export_onnx(ir, fused, target="onnxruntime")
    export_onnx(ir, standard, target="onnx")  # no ONNX Runtime contrib ops: the model's own rotation
    layers = model.config.num_hidden_layers
    bodies = subgraphs(onnx.load(fused, load_external_data=False).graph.node[-1])
    assert [sum(node.op_type == "RotaryEmbedding" for node in body.node) for body in bodies] == [2 * layers] * 2
    assert not [node for node in onnx.load(standard, load_external_data=False).graph.node if node.op_type == "RotaryEmbedding"]
    np.testing.assert_allclose(prompt_logits(fused), prompt_logits(standard), rtol=1e-4, atol=1e-4)
