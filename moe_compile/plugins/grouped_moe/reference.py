"""The GroupedMoE op in plain PyTorch: the definition every other implementation must match.

    router_logits [T, E] ──► scores = softmax | sigmoid (fp32)
                             choice = scores (+ score_bias)
                             group-limited routing: keep the best topk_group groups
                             top-k of choice, ties to the lower expert index
                             weights = scores at those experts
                                       (/ their sum if normalize_topk) * routed_scaling
    hidden [T, H] ──► per chosen expert e:  h = act(x @ W_gate_up[e]^T + b)   # [n, I]
                                            y = h @ W_down[e]^T + b           # [n, H]
                      out[t] = sum over its k experts of weight * y           # [T, H]

Experts are visited in ascending order and each token's contributions are added in that
order, in fp32, so the result is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attributes import GroupedMoEAttributes

# Added to the normaliser, as DeepSeek-V3 does, so that an all-zero top-k (possible with
# sigmoid scores that underflow) divides to zero instead of NaN. Below fp32 round-off for
# any real sum of probabilities.
_NORMALISER_EPS = 1e-20


def _descending(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest values along the last axis, ties to the lower index."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :count]


def _group_limited(choice: torch.Tensor, attrs: GroupedMoEAttributes) -> torch.Tensor:
    """Set the choice score of experts outside the best `topk_group` groups to -inf."""
    tokens, experts = choice.shape
    grouped = choice.view(tokens, attrs.n_group, experts // attrs.n_group)  # [T, G, E/G]
    if attrs.group_scoring == "max":
        group_score = grouped.max(dim=-1).values  # [T, G]
    else:  # sum_top2
        best_two = torch.sort(grouped, dim=-1, descending=True).values[..., :2]
        group_score = best_two.sum(dim=-1)
    keep_groups = _descending(group_score, attrs.topk_group)  # [T, topk_group]
    group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep_groups, True)
    expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(tokens, experts)
    return choice.masked_fill(~expert_mask, float("-inf"))


def route(
    router_logits: torch.Tensor,
    attrs: GroupedMoEAttributes,
    score_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose experts per token. Returns (weights [T, k] fp32, expert indices [T, k] int64)."""
    logits = router_logits.float()
    scores = logits.softmax(dim=-1) if attrs.scoring == "softmax" else logits.sigmoid()  # [T, E]
    choice = scores if score_bias is None else scores + score_bias.float()
    if attrs.group_limited:
        choice = _group_limited(choice, attrs)
    experts = _descending(choice, attrs.top_k)  # [T, k]
    weights = scores.gather(1, experts)  # [T, k]
    if attrs.normalize_topk:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + _NORMALISER_EPS)
    return weights * attrs.routed_scaling, experts


def activate(gate_up: torch.Tensor, attrs: GroupedMoEAttributes) -> torch.Tensor:
    """[n, 2I] (gate rows first, then up rows) -> [n, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    if attrs.activation == "silu_glu":
        return F.silu(gate) * up
    if attrs.activation == "gelu_glu":
        return F.gelu(gate) * up
    if attrs.activation == "gelu_tanh_glu":
        return F.gelu(gate, approximate="tanh") * up
    gate = gate.clamp(max=attrs.swiglu_limit)  # swiglu_clamp
    up = up.clamp(min=-attrs.swiglu_limit, max=attrs.swiglu_limit)
    return gate * torch.sigmoid(gate * attrs.swiglu_alpha) * (up + 1)


def expert_forward(
    x: torch.Tensor,
    expert: int,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate_up: torch.Tensor | None,
    b_down: torch.Tensor | None,
    attrs: GroupedMoEAttributes,
) -> torch.Tensor:
    """One expert's output for the rows of x: [n, H] -> [n, H]."""
    gate_up = F.linear(x, w_gate_up[expert], None if b_gate_up is None else b_gate_up[expert])  # [n, 2I]
    return F.linear(activate(gate_up, attrs), w_down[expert], None if b_down is None else b_down[expert])


def grouped_moe_reference(
    hidden: torch.Tensor,
    router_logits: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    attrs: GroupedMoEAttributes,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    score_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """hidden [T, H], router_logits [T, E], w_gate_up [E, 2I, H], w_down [E, H, I] -> [T, H]."""
    tokens, k = hidden.shape[0], attrs.top_k
    weights, experts = route(router_logits, attrs, score_bias)  # [T, k], [T, k]
    flat_experts = experts.reshape(-1)  # [T*k], slot s belongs to token s // k
    slots = torch.argsort(flat_experts, stable=True)  # slots grouped by expert, ascending
    counts = torch.bincount(flat_experts, minlength=w_gate_up.shape[0]).tolist()
    flat_weights = weights.reshape(-1)
    out = torch.zeros(tokens, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        expert_slots = slots[start : start + count]
        start += count
        token_rows = expert_slots // k
        y = expert_forward(hidden[token_rows], expert, w_gate_up, w_down, b_gate_up, b_down, attrs)
        out.index_add_(0, token_rows, y.float() * flat_weights[expert_slots, None])
    return out.to(hidden.dtype)
