"""The real-shaped configs and per-layer tensor shapes the scale benchmarks write checkpoints of
(scale.py: profile, plan, export, validate; lexi_scale.py: LExI's profile at 24 layers)."""

from __future__ import annotations

QWEN15_MOE_A27B = {
    "model_type": "qwen2_moe", "hidden_size": 2048, "moe_intermediate_size": 1408, "num_experts": 60,
    "num_experts_per_tok": 4, "shared_expert_intermediate_size": 5632, "intermediate_size": 5632,
    "num_attention_heads": 16, "num_key_value_heads": 16, "norm_topk_prob": False, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "rms_norm_eps": 1e-6, "max_position_embeddings": 8192, "tie_word_embeddings": False,
    "vocab_size": 1024,  # the real 151936 only adds embedding bytes, which LExI never reads
    "torch_dtype": "bfloat16",
}


QWEN3_30B_A3B = dict(
    model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], hidden_size=2048, intermediate_size=6144,
    moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
    num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6,
    max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=False, decoder_sparse_step=1,
    mlp_only_layers=[], hidden_act="silu", torch_dtype="bfloat16", bos_token_id=151643, eos_token_id=151645)


def layer_shapes(config: dict, layer: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of decoder layer `layer` of a Qwen2-MoE or Qwen3-MoE config, by checkpoint name."""
    hidden, heads, kv = (config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    head_dim = config.get("head_dim", hidden // heads)
    prefix = f"model.layers.{layer}"
    shapes = {f"{prefix}.input_layernorm.weight": (hidden,), f"{prefix}.post_attention_layernorm.weight": (hidden,),
              f"{prefix}.self_attn.q_proj.weight": (heads * head_dim, hidden),
              f"{prefix}.self_attn.k_proj.weight": (kv * head_dim, hidden),
              f"{prefix}.self_attn.v_proj.weight": (kv * head_dim, hidden),
              f"{prefix}.self_attn.o_proj.weight": (hidden, heads * head_dim),
              f"{prefix}.mlp.gate.weight": (config["num_experts"], hidden)}
    if config["model_type"] == "qwen3_moe":
        shapes |= {f"{prefix}.self_attn.q_norm.weight": (head_dim,), f"{prefix}.self_attn.k_norm.weight": (head_dim,)}
    else:  # qwen2_moe: biased q/k/v, a gated shared expert
        shared = config["shared_expert_intermediate_size"]
        shapes |= {f"{prefix}.self_attn.q_proj.bias": (heads * head_dim,),
                   f"{prefix}.self_attn.k_proj.bias": (kv * head_dim,),
                   f"{prefix}.self_attn.v_proj.bias": (kv * head_dim,),
                   f"{prefix}.mlp.shared_expert_gate.weight": (1, hidden)}
        shapes |= {f"{prefix}.mlp.shared_expert.{name}.weight": shape for name, shape in _mlp_shapes(hidden, shared)}
    for expert in range(config["num_experts"]):
        shapes |= {f"{prefix}.mlp.experts.{expert}.{name}.weight": shape
                   for name, shape in _mlp_shapes(hidden, config["moe_intermediate_size"])}
    return shapes


def _mlp_shapes(hidden: int, inter: int) -> tuple[tuple[str, tuple[int, int]], ...]:
    return ("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)), ("down_proj", (hidden, inter))
