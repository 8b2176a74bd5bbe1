"""Tiny random models, one per registered architecture: the one place test models come from.

Each config is small enough to run in milliseconds and still exercises what makes its
architecture different (dense layers, shared experts, group-limited routing, biases).
"""

from __future__ import annotations

from pathlib import Path

import torch

_COMMON = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=3, max_position_embeddings=128)
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)

TINY_CONFIGS: dict[str, dict] = {
    "qwen2_moe": dict(intermediate_size=48, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                      num_experts=8, num_experts_per_tok=3, mlp_only_layers=[1], norm_topk_prob=False),
    "qwen3_moe": dict(intermediate_size=48, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                      norm_topk_prob=True, head_dim=8, decoder_sparse_step=1),
    "olmoe": dict(intermediate_size=16, num_experts=8, num_experts_per_tok=2, eos_token_id=1, pad_token_id=0),
    "mixtral": dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2),
    "deepseek_v2": dict(intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=3,
                        n_shared_experts=2, first_k_dense_replace=1, topk_method="group_limited_greedy",
                        n_group=4, topk_group=2, routed_scaling_factor=1.5, q_lora_rank=None, **_MLA),
    "deepseek_v3": dict(intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=3,
                        n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2,
                        routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=24,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **_MLA),
    "gpt_oss": dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, head_dim=8,
                    sliding_window=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    fields = {**_COMMON, **TINY_CONFIGS[model_type], **overrides}
    return AutoConfig.for_model(model_type, **fields)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """transformers zero-initialises some tensors (routers, biases, DeepSeek-V3's score bias):
    give every parameter and buffer-like tensor distinct random values so routing is real."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[-1] ** -0.5)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))


def tiny_model(model_type: str, seed: int = 0, **overrides) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), attn_implementation="eager")
    _randomize(model, seed)
    return model.eval()


def save_tiny_model(model_type: str, folder: Path, seed: int = 0, **overrides) -> torch.nn.Module:
    model = tiny_model(model_type, seed, **overrides)
    model.save_pretrained(folder)
    return model


def prompt_logits(onnx_path):
    """The logits of a tiny model's ONNX export for one fixed prompt (batch 2, 9 tokens, empty cache)."""
    import numpy as np

    from moe_compile.validate.runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx_path)
    ids = np.arange(2 * 9, dtype=np.int64).reshape(2, 9) % 50 + 3
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(9), (2, 1))}
    return runner.infer({**feed, **runner.empty_past(2)})["logits"]
