"""The grouped-MoE Triton kernels: six (four at decode) launches, grids computable from the shapes.

    router_logits [T, E], hidden [T, H]
      │ 1 _route_kernel     grid (chunks,)  BLOCK_T tokens a program: the NaN/Inf flag of each
      │                     token (its logits then count as zeros); softmax | sigmoid, score bias
      │                     (choice only), group-limited routing, top-k (ties to the lower
      │                     index), normalise, routed scaling; per chunk: expert counts and
      │                     each slot's rank among the chunk's slots of its expert.
      │                     One chunk only (T <= BLOCK_T, decode): it also does 2 and 3 itself,
      │                     in registers, and those two are not launched
      ▼ topk_ids [S], topk_weights [S], slot_rank [S], chunk_counts [chunks, E], nonfinite [T]    S = T*k
      │ 2 _scan_kernel      grid (1,)       exclusive scan of chunk_counts over chunks; each
      │                     expert's rows padded to ALIGN_M; the expert of every ALIGN_M rows
      ▼ chunk_offsets [chunks, E], expert_counts [E], expert_start [E], block_expert [max_blocks]
      │ 3 _scatter_kernel   grid (chunks,)  sorted_ids[expert_start + chunk_offset + rank] = slot
      ▼ sorted_ids [max_padded]: slots grouped by expert, ascending, each group ALIGN_M aligned
      │ 4 _gate_up_kernel   grid (gemm_blocks * cdiv(I, BLOCK_N),)  x[slot // k] @ W_gate_up[e]^T
      │                     (+ b), both halves in one program, fused activation
      ▼ inter [S, I]
      │ 5 _down_kernel      grid (gemm_blocks * cdiv(H, BLOCK_N),)  inter @ W_down[e]^T (+ b),
      │                     times the slot's routing weight
      ▼ per_slot [S, H]
      │ 6 _combine_kernel   grid (T, cdiv(H, BLOCK_H))  out[t] = Σ_j per_slot[t*k + j], j = 0..k-1;
      │                     NaN where nonfinite[t]
      ▼ out [T, H]

Parameters come in the order TensorRT's AOT plugin passes them (plugins/tensorrt/stages.py):
input pointers, then runtime ints, then output pointers, then constexprs. Floats are
constexprs (TensorRT passes int32 scalars only).

Offsets into tensors that can pass 2^31 elements are computed in 64 bits: an expert's weights
(`expert * stride_we`: DeepSeek-V3's 256 experts of 2*2048 x 7168 pass it at expert 74), a
token's or slot's row (`slot * H`: T*k*H passes it from about 37,000 tokens at DeepSeek-V3's
shape), and the combine's rows. Everything else (counts, slot numbers, offsets within one
expert's matrix) stays int32. The TensorRT plugins pass their ints as int32 (strides of one
expert's matrix, which fit) and the products are formed in the kernels, so they get the same.

No host synchronisation anywhere: the alignment (2, 3) writes into worst-case buffers
(`launch.LaunchPlan`), and GEMM programs whose row block lies past the padded total find
expert id E in `block_expert` and return at once. That is what makes the pipeline CUDA-graph
capturable and lets the TensorRT plugin launch it with fixed grids, no Python at run time.

Deterministic: no atomics. Counts come from per-chunk histograms and one scan, a slot's place
from its rank, and the k contributions of a token are added in slot order by kernel 6, in fp32.
GEMMs accumulate in fp32 (`ieee` precision for fp32 inputs, so no TF32); the intermediate and
per-slot outputs are stored in the activation dtype, as the reference rounds them.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Added to the normaliser, as reference._NORMALISER_EPS.
NORMALISER_EPS = tl.constexpr(1e-20)


@triton.jit
def _nonfinite(x):
    return ~(tl.abs(x) < float("inf"))  # NaN compares false


@triton.jit
def _top_k_slots(values, valid_columns, K: tl.constexpr, BLOCK_C: tl.constexpr):
    """values [R, BLOCK_C] -> [R, BLOCK_C] int32: j where a column is the j-th best of its row, else -1.

    Each round takes the row's largest value among columns not yet taken and, among equal
    values, the lowest column, so ties break toward the lower index (as a stable sort would).
    """
    columns = tl.arange(0, BLOCK_C)
    taken = tl.zeros(values.shape, tl.int1) | ~valid_columns[None, :]  # padding columns are never chosen
    slot_of = tl.full(values.shape, -1, tl.int32)
    for j in range(K):
        available = tl.where(taken, float("-inf"), values)
        best = tl.max(available, axis=1)
        candidates = (available == best[:, None]) & ~taken
        pick = tl.min(tl.where(candidates, columns[None, :], BLOCK_C), axis=1)
        picked = columns[None, :] == pick[:, None]
        taken = taken | picked
        slot_of = tl.where(picked, j, slot_of)
    return slot_of


@triton.jit
def _group_limited(choice, experts, num_experts, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                   GROUP_SUM_TOP2: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr):
    """Set the choice of experts outside each row's TOPK_GROUP best groups to -inf.

    A group scores its best expert (max) or its two best summed (sum_top2; a one-expert group
    scores that expert alone), as reference._group_limited.
    """
    group_size = num_experts // N_GROUP
    group_of = experts // group_size
    groups = tl.arange(0, BLOCK_G)
    group_score = tl.full((choice.shape[0], BLOCK_G), float("-inf"), tl.float32)
    for g in tl.static_range(N_GROUP):
        member = (group_of == g) & (experts < num_experts)
        values = tl.where(member[None, :], choice, float("-inf"))
        best = tl.max(values, axis=1)
        if GROUP_SUM_TOP2:
            first = tl.min(tl.where(values == best[:, None], experts[None, :], BLOCK_E), axis=1)
            second = tl.max(tl.where(experts[None, :] == first[:, None], float("-inf"), values), axis=1)
            best = best + tl.where(group_size > 1, second, 0.0)
        group_score = tl.where(groups[None, :] == g, best[:, None], group_score)
    kept = _top_k_slots(group_score, groups < N_GROUP, TOPK_GROUP, BLOCK_G) >= 0
    eligible = tl.zeros(choice.shape, tl.int1)
    for g in tl.static_range(N_GROUP):
        kept_g = tl.sum(tl.where((groups[None, :] == g) & kept, 1, 0), axis=1) > 0
        eligible = eligible | (kept_g[:, None] & (group_of == g)[None, :])
    return tl.where(eligible, choice, float("-inf"))


@triton.jit
def _place_experts(counts, experts, expert_ok, expert_counts_ptr, expert_start_ptr, block_expert_ptr, max_blocks,
                   ALIGN_M: tl.constexpr, BLOCK_B: tl.constexpr):
    """From the row count of every expert: its padded start and the owner of every row block
    (written for the GEMMs); returns the starts."""
    padded = (counts + ALIGN_M - 1) // ALIGN_M * ALIGN_M
    end = tl.cumsum(padded, axis=0)
    tl.store(expert_counts_ptr + experts, counts, mask=expert_ok)
    tl.store(expert_start_ptr + experts, end - padded, mask=expert_ok)
    # Block b belongs to the expert whose padded range holds row b*ALIGN_M: the number of
    # experts ending at or before it. Past the padded total that is num_experts: "no work".
    last = tl.where(expert_ok, end, 2147483647)
    first = 0
    while first < max_blocks:  # a while loop: the bound depends on the token count
        blocks = first + tl.arange(0, BLOCK_B)
        owner = tl.sum((last[None, :] <= blocks[:, None] * ALIGN_M).to(tl.int32), axis=1)
        tl.store(block_expert_ptr + blocks, owner, mask=blocks < max_blocks)
        first += BLOCK_B
    return end - padded


@triton.jit
def _route_kernel(logits_ptr, hidden_ptr, score_bias_ptr,
                  num_tokens, num_experts, stride_logits, stride_hidden,
                  topk_ids_ptr, topk_weights_ptr, slot_rank_ptr, chunk_counts_ptr, nonfinite_ptr,
                  expert_counts_ptr, expert_start_ptr, block_expert_ptr, sorted_ids_ptr, max_blocks,
                  K: tl.constexpr, SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr, ROUTED_SCALING: tl.constexpr,
                  HAS_SCORE_BIAS: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                  GROUP_SUM_TOP2: tl.constexpr, SINGLE_CHUNK: tl.constexpr, HIDDEN: tl.constexpr,
                  ALIGN_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_HC: tl.constexpr):
    """Routing, the NaN/Inf flag of each token, and the chunk's counts and ranks for kernels 2-3;
    with one chunk only (decode), the whole alignment in registers, so that kernels 2-3 are not
    launched. The four pointers and the int after nonfinite_ptr are read by that decode path only
    (the multi-chunk launch, the TensorRT plugin's, passes None: they are not kernel parameters then).

    NaN/Inf rule (reference.py): a token with a non-finite value in its router or hidden row is
    routed as if its logits were all zero (so that its slots still name valid experts; a NaN
    compares false everywhere) and flagged in nonfinite; kernel 6 writes its row as NaN.
    """
    chunk = tl.program_id(0)
    tokens = chunk * BLOCK_T + tl.arange(0, BLOCK_T)
    experts = tl.arange(0, BLOCK_E)
    token_ok = tokens < num_tokens
    expert_ok = experts < num_experts
    rows = tokens.to(tl.int64)  # 64-bit offsets: T * stride may pass 2^31 (see the module docstring)
    logits = tl.load(logits_ptr + rows[:, None] * stride_logits + experts[None, :],
                     mask=token_ok[:, None] & expert_ok[None, :], other=0.0).to(tl.float32)
    finite = tl.sum(_nonfinite(logits).to(tl.int32), axis=1) == 0
    for first in tl.range(0, HIDDEN, BLOCK_HC):
        cols = first + tl.arange(0, BLOCK_HC)
        x = tl.load(hidden_ptr + rows[:, None] * stride_hidden + cols[None, :],
                    mask=token_ok[:, None] & (cols < HIDDEN)[None, :], other=0.0).to(tl.float32)
        finite = finite & (tl.sum(_nonfinite(x).to(tl.int32), axis=1) == 0)
    tl.store(nonfinite_ptr + tokens, (~finite).to(tl.int32), mask=token_ok)
    logits = tl.where(finite[:, None], logits, 0.0)
    if SIGMOID:
        scores = tl.sigmoid(logits)
    else:
        logits = tl.where(expert_ok[None, :], logits, float("-inf"))
        exp = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        scores = exp / tl.sum(exp, axis=1)[:, None]
    choice = scores
    if HAS_SCORE_BIAS:
        # Loaded as a [BLOCK_T, BLOCK_E] tile (each token's row the same), not as one row broadcast:
        # on an H100 this routing failed at BLOCK_E <= 64 and passed at 128 and 256, which fits a
        # broadcast from a 1-D layout smaller than the program's 128 threads (a hypothesis, not
        # yet run on a GPU; plugins/grouped_moe/gpu_failures.py keeps such layers off the kernels).
        bias = tl.load(score_bias_ptr + experts[None, :] + 0 * tokens[:, None], mask=expert_ok[None, :], other=0.0)
        choice = choice + bias.to(tl.float32)
    if N_GROUP > 1:
        choice = _group_limited(choice, experts, num_experts, N_GROUP, TOPK_GROUP, GROUP_SUM_TOP2, BLOCK_E, BLOCK_G)
    slot_of = _top_k_slots(choice, expert_ok, K, BLOCK_E)
    chosen = (slot_of >= 0) & token_ok[:, None]
    weights = tl.where(chosen, scores, 0.0)
    if NORMALIZE:
        weights = weights / (tl.sum(weights, axis=1)[:, None] + NORMALISER_EPS)
    weights = weights * ROUTED_SCALING
    slots = tokens[:, None] * K + slot_of
    tl.store(topk_ids_ptr + slots, tl.zeros(chosen.shape, tl.int32) + experts[None, :], mask=chosen)
    tl.store(topk_weights_ptr + slots, weights, mask=chosen)
    ones = chosen.to(tl.int32)
    rank = tl.cumsum(ones, axis=0) - ones
    if SINGLE_CHUNK:
        start = _place_experts(tl.sum(ones, axis=0), experts, expert_ok, expert_counts_ptr, expert_start_ptr,
                               block_expert_ptr, max_blocks, ALIGN_M, BLOCK_B)
        tl.store(sorted_ids_ptr + start[None, :] + rank, slots, mask=chosen)
    else:
        tl.store(slot_rank_ptr + slots, rank, mask=chosen)
        tl.store(chunk_counts_ptr + chunk * num_experts + experts, tl.sum(ones, axis=0), mask=expert_ok)


@triton.jit
def _scan_kernel(chunk_counts_ptr, topk_ids_ptr,
                 num_chunks, num_experts, max_blocks,
                 chunk_offsets_ptr, expert_counts_ptr, expert_start_ptr, block_expert_ptr,
                 ALIGN_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    """topk_ids_ptr is not read: its length, the slot count, is how the TensorRT plugin sizes
    block_expert (a plugin's output shapes are functions of its input shapes only)."""
    experts = tl.arange(0, BLOCK_E)
    expert_ok = experts < num_experts
    carry = tl.zeros((BLOCK_E,), tl.int32)
    first = 0
    while first < num_chunks:  # a while loop: these bounds depend on the token count
        chunks = first + tl.arange(0, BLOCK_C)
        where = chunks[:, None] * num_experts + experts[None, :]
        mask = (chunks < num_chunks)[:, None] & expert_ok[None, :]
        counts = tl.load(chunk_counts_ptr + where, mask=mask, other=0)
        tl.store(chunk_offsets_ptr + where, tl.cumsum(counts, axis=0) - counts + carry[None, :], mask=mask)
        carry += tl.sum(counts, axis=0)
        first += BLOCK_C
    _place_experts(carry, experts, expert_ok, expert_counts_ptr, expert_start_ptr, block_expert_ptr, max_blocks,
                   ALIGN_M, BLOCK_B)


@triton.jit
def _scatter_kernel(topk_ids_ptr, slot_rank_ptr, chunk_offsets_ptr, expert_start_ptr,
                    num_slots, num_experts,
                    sorted_ids_ptr, SLOTS_PER_CHUNK: tl.constexpr, BLOCK_S: tl.constexpr):
    chunk = tl.program_id(0)
    slots = chunk * SLOTS_PER_CHUNK + tl.arange(0, BLOCK_S)
    mask = (tl.arange(0, BLOCK_S) < SLOTS_PER_CHUNK) & (slots < num_slots)
    expert = tl.load(topk_ids_ptr + slots, mask=mask, other=0)
    position = (tl.load(expert_start_ptr + expert, mask=mask, other=0)
                + tl.load(chunk_offsets_ptr + chunk * num_experts + expert, mask=mask, other=0)
                + tl.load(slot_rank_ptr + slots, mask=mask, other=0))
    tl.store(sorted_ids_ptr + position, slots, mask=mask)


@triton.jit
def _tile(max_blocks, N: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column block) of this program. Programs run GROUP_M row blocks (mostly one
    expert's) across all column blocks before moving on, so the rows and the expert's weights
    are read from HBM about once and then from L2."""
    pid = tl.program_id(0)
    columns = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * columns
    first = pid // in_group * GROUP_M
    rows_in_group = tl.minimum(max_blocks - first, GROUP_M)
    return first + pid % in_group % rows_in_group, pid % in_group // rows_in_group


@triton.jit
def _block_rows(block, sorted_ids_ptr, block_expert_ptr, expert_counts_ptr, expert_start_ptr, num_experts,
                BLOCK_M: tl.constexpr, ALIGN_M: tl.constexpr):
    """(expert, has this row block work, its slots in row block `block`, which rows are real);
    expert and slots as int64, since they multiply strides and row lengths into offsets past 2^31.

    The groups are ALIGN_M-aligned (block_expert has one entry per ALIGN_M rows) and BLOCK_M
    divides ALIGN_M, so a row block lies inside one group; a block of padding rows only (the
    groups of the TensorRT engine are aligned for its largest BLOCK_M) has no work."""
    expert = tl.load(block_expert_ptr + block // (ALIGN_M // BLOCK_M))
    real_expert = expert < num_experts
    safe_expert = tl.where(real_expert, expert, 0)
    end = tl.load(expert_start_ptr + safe_expert) + tl.load(expert_counts_ptr + safe_expert)
    first_row = block * BLOCK_M
    real_expert = real_expert & (first_row < end)
    rows = first_row + tl.arange(0, BLOCK_M)
    row_ok = (rows < end) & real_expert
    slots = tl.load(sorted_ids_ptr + rows, mask=row_ok, other=0)
    return safe_expert.to(tl.int64), real_expert, slots.to(tl.int64), row_ok


@triton.jit
def _activate(gate, up, SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr, ACTIVATION: tl.constexpr):
    """fp32 gate, up [M, N] -> act(gate) * up, as reference.activate. ACTIVATION is the index in
    attributes.ACTIVATIONS (an int: every Triton front end, AOT included, takes int constexprs)."""
    if ACTIVATION == 0:  # silu_glu
        return gate * tl.sigmoid(gate) * up
    elif ACTIVATION == 1:  # gelu_glu
        return 0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)) * up
    elif ACTIVATION == 2:  # gelu_tanh_glu; tanh(z) = 2 sigmoid(2z) - 1
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        return gate * tl.sigmoid(2.0 * inner) * up
    else:  # swiglu_clamp (gpt-oss)
        gate = tl.minimum(gate, SWIGLU_LIMIT)
        up = tl.minimum(tl.maximum(up, -SWIGLU_LIMIT), SWIGLU_LIMIT)
        return gate * tl.sigmoid(gate * SWIGLU_ALPHA) * (up + 1.0)


@triton.jit
def _gate_up_kernel(hidden_ptr, w_ptr, bias_ptr, sorted_ids_ptr, block_expert_ptr, expert_counts_ptr,
                    expert_start_ptr,
                    top_k, num_experts, max_blocks, stride_we, stride_wn, stride_wk, stride_be,
                    inter_ptr,
                    SWIGLU_ALPHA: tl.constexpr, SWIGLU_LIMIT: tl.constexpr, HIDDEN: tl.constexpr, INTER: tl.constexpr,
                    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                    ALIGN_M: tl.constexpr):
    block, column = _tile(max_blocks, INTER, BLOCK_N, GROUP_M)
    expert, real_expert, slots, row_ok = _block_rows(block, sorted_ids_ptr, block_expert_ptr, expert_counts_ptr,
                                                     expert_start_ptr, num_experts, BLOCK_M, ALIGN_M)
    if real_expert:
        tokens = slots // top_k
        cols = column * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < INTER
        w_gate = w_ptr + expert * stride_we + cols[None, :] * stride_wn
        w_up = w_gate + INTER * stride_wn
        gate = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for first in tl.range(0, HIDDEN, BLOCK_K):
            ks = first + tl.arange(0, BLOCK_K)
            k_ok = ks < HIDDEN
            x = tl.load(hidden_ptr + tokens[:, None] * HIDDEN + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = k_ok[:, None] & col_ok[None, :]
            gate = tl.dot(x, tl.load(w_gate + ks[:, None] * stride_wk, mask=w_mask, other=0.0).to(x.dtype), gate,
                          input_precision=PRECISION)
            up = tl.dot(x, tl.load(w_up + ks[:, None] * stride_wk, mask=w_mask, other=0.0).to(x.dtype), up,
                        input_precision=PRECISION)
        if HAS_BIAS:
            bias = bias_ptr + expert * stride_be + cols
            gate += tl.load(bias, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            up += tl.load(bias + INTER, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        dtype = inter_ptr.dtype.element_ty
        # Round gate and up to the activation dtype first: the reference's linear output is in it.
        h = _activate(gate.to(dtype).to(tl.float32), up.to(dtype).to(tl.float32), SWIGLU_ALPHA, SWIGLU_LIMIT,
                      ACTIVATION)
        tl.store(inter_ptr + slots[:, None] * INTER + cols[None, :], h.to(dtype),
                 mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(inter_ptr, w_ptr, bias_ptr, topk_weights_ptr, sorted_ids_ptr, block_expert_ptr,
                 expert_counts_ptr, expert_start_ptr,
                 num_experts, max_blocks, stride_we, stride_wn, stride_wk, stride_be,
                 per_slot_ptr,
                 HIDDEN: tl.constexpr, INTER: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                 ALIGN_M: tl.constexpr):
    block, column = _tile(max_blocks, HIDDEN, BLOCK_N, GROUP_M)
    expert, real_expert, slots, row_ok = _block_rows(block, sorted_ids_ptr, block_expert_ptr, expert_counts_ptr,
                                                     expert_start_ptr, num_experts, BLOCK_M, ALIGN_M)
    if real_expert:
        cols = column * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < HIDDEN
        w = w_ptr + expert * stride_we + cols[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for first in tl.range(0, INTER, BLOCK_K):
            ks = first + tl.arange(0, BLOCK_K)
            k_ok = ks < INTER
            h = tl.load(inter_ptr + slots[:, None] * INTER + ks[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(h, tl.load(w + ks[:, None] * stride_wk, mask=k_ok[:, None] & col_ok[None, :],
                                    other=0.0).to(h.dtype), acc, input_precision=PRECISION)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + expert * stride_be + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        dtype = per_slot_ptr.dtype.element_ty
        weight = tl.load(topk_weights_ptr + slots, mask=row_ok, other=0.0)
        y = acc.to(dtype).to(tl.float32) * weight[:, None]
        tl.store(per_slot_ptr + slots[:, None] * HIDDEN + cols[None, :], y.to(dtype),
                 mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _combine_kernel(per_slot_ptr, nonfinite_ptr, hidden_size, out_ptr, K: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < hidden_size
    row = token.to(tl.int64)  # T * k * H may pass 2^31
    acc = tl.zeros((BLOCK_H,), tl.float32)
    for j in range(K):
        acc += tl.load(per_slot_ptr + (row * K + j) * hidden_size + cols, mask=mask, other=0.0).to(tl.float32)
    acc = tl.where(tl.load(nonfinite_ptr + token) != 0, float("nan"), acc)  # the NaN/Inf rule, see kernel 1
    tl.store(out_ptr + row * hidden_size + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)
