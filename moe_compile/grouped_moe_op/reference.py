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

Non-finite inputs: a token with a NaN or an infinity anywhere in its hidden row or its
router-logit row gets an all-NaN output row; every other token is computed as usual. IEEE
arithmetic alone would leave that row to each implementation's softmax, top-k and exp (ONNX
Runtime's MoE kernel returns zeros for it), so the rule is stated, and every implementation
applies it. Weights (and the score-correction bias) are assumed finite.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def choose_experts(
    router_logits: torch.Tensor,
    attrs: GroupedMoEAttributes,
    score_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores of the chosen experts [T, k] fp32, their indices [T, k]), best first.

    The order matters: the top-k' for any k' < k is the first k' columns, which is what lets
    LExI derive every smaller k from one routing pass.
    """
    logits = router_logits.float()
    scores = logits.softmax(dim=-1) if attrs.scoring == "softmax" else logits.sigmoid()  # [T, E]
    choice = scores if score_bias is None else scores + score_bias.float()
    if attrs.group_limited:
        choice = _group_limited(choice, attrs)
    experts = _descending(choice, attrs.top_k)  # [T, k]
    return scores.gather(1, experts), experts


def routing_weights(chosen_scores: torch.Tensor, attrs: GroupedMoEAttributes) -> torch.Tensor:
    """Scores of the chosen experts [T, k] -> their combine weights [T, k]."""
    weights = chosen_scores
    if attrs.normalize_topk:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + _NORMALISER_EPS)
    return weights * attrs.routed_scaling


def route(
    router_logits: torch.Tensor,
    attrs: GroupedMoEAttributes,
    score_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose experts per token. Returns (weights [T, k] fp32, expert indices [T, k] int64)."""
    chosen_scores, experts = choose_experts(router_logits, attrs, score_bias)
    return routing_weights(chosen_scores, attrs), experts


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
    """One expert's output for the rows of x: [n, H] -> [n, H], computed in x's dtype."""
    def of(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[expert].to(x.dtype)

    gate_up = F.linear(x, of(w_gate_up), of(b_gate_up))  # [n, 2I]
    return F.linear(activate(gate_up, attrs), of(w_down), of(b_down))


def slots_by_expert(experts: torch.Tensor, num_experts: int) -> Iterator[tuple[int, torch.Tensor]]:
    """For experts [T, k], yield (expert, its slots in the flattened [T*k]) in ascending expert
    order, skipping experts no token chose. Slot s belongs to token s // k."""
    flat = experts.reshape(-1)
    slots = torch.argsort(flat, stable=True)  # slots grouped by expert, ascending
    start = 0
    for expert, count in enumerate(torch.bincount(flat, minlength=num_experts).tolist()):
        if count:
            yield expert, slots[start : start + count]
            start += count


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
    k = attrs.top_k
    weights, experts = route(router_logits, attrs, score_bias)  # [T, k], [T, k]
    flat_weights = weights.reshape(-1)
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for expert, slots in slots_by_expert(experts, w_gate_up.shape[0]):
        rows = slots // k
        y = expert_forward(hidden[rows], expert, w_gate_up, w_down, b_gate_up, b_down, attrs)
        out.index_add_(0, rows, y.float() * flat_weights[slots, None])
    return out.masked_fill_(nonfinite_tokens(hidden, router_logits)[:, None], float("nan")).to(hidden.dtype)


def nonfinite_tokens(hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
    """[T] bool: the tokens the NaN/Inf rule poisons (a NaN or an infinity in the hidden or router row)."""
    return ~(hidden.isfinite().all(dim=-1) & router_logits.isfinite().all(dim=-1))


def expert_outputs_per_slot(
    hidden: torch.Tensor,
    experts: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    attrs: GroupedMoEAttributes,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unweighted output of each chosen expert: hidden [T, H], experts [T, k] -> [T, k, H].

    Computed in hidden's dtype; weights are cast one expert at a time, so fp32 outputs from
    bf16 weights cost one expert's copy, not the layer's.
    """
    tokens, k = experts.shape
    out = hidden.new_empty(tokens * k, hidden.shape[1])
    for expert, slots in slots_by_expert(experts, w_gate_up.shape[0]):
        out[slots] = expert_forward(hidden[slots // k], expert, w_gate_up, w_down, b_gate_up, b_down, attrs)
    return out.view(tokens, k, hidden.shape[1])
