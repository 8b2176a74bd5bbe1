"""Sensitivity measured on the model's output: KL of the final next-token distribution.

With every MoE block rewritten to a StaticTopKMoE at its base top-k, one layer at a time is set
to k and the whole model runs on calibration tokens; the layer's loss of k is the mean over
positions of KL(p_base || p_k) of the next-token distribution. The tokens are either sampled
from the model itself (estimator "self-kl": no data set) or the windows of a UTF-8 text
(estimator "calibration"). A model over 2 GiB runs layer by layer (compiler/layered_model.py:
one decoder layer's weights resident at a time), and then every forward pass reads the whole
checkpoint: one pass per (layer, k), per plan scored and per sampled token, unlike the
data-free estimators, which read each layer's weights once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from moe_compile.compiler.ir import MoEModel
from moe_compile.compiler.layered_model import reference_lm
from moe_compile.errors import InvalidInput
from moe_compile.finite import check_finite_values
from moe_compile.validate.perplexity import eval_windows

from .options import ProfileOptions


def self_generated_tokens(lm, vocab_size: int, options: ProfileOptions) -> torch.Tensor:
    """`options.samples` sequences [S, seq_len] sampled from the model at `options.temperature`
    (all tokens, no top-k or top-p), each started from a seeded random token."""
    generator = torch.Generator().manual_seed(options.seed)
    start = torch.randint(vocab_size, (options.samples, 1), generator=generator)
    torch.manual_seed(options.seed)  # generate() samples from torch's global generator
    with torch.no_grad():
        out = lm.generate(input_ids=start, attention_mask=torch.ones_like(start), do_sample=True, top_k=0,
                          top_p=1.0, temperature=options.temperature, max_new_tokens=options.seq_len - 1,
                          min_new_tokens=options.seq_len - 1, pad_token_id=0, eos_token_id=None)
    return out[:, : options.seq_len]


def calibration_tokens(moe_model: MoEModel, options: ProfileOptions) -> torch.Tensor:
    """The first `options.samples` windows of seq_len tokens of the --calibration text."""
    if not options.calibration:
        raise InvalidInput("--estimator calibration needs --calibration FILE (plain UTF-8 text)")
    try:
        tokens = eval_windows(moe_model.path, options.calibration, window=options.seq_len)[: options.samples]
    except InvalidInput as exc:
        raise InvalidInput(f"--calibration: {str(exc).replace('evaluation text', 'calibration text')}") from None
    vocab_size = int(moe_model.config.vocab_size)
    if int(tokens.max()) >= vocab_size:
        raise InvalidInput(f"{moe_model.path}: tokenizer.json gives ids up to {int(tokens.max())}, "
                           f"beyond the model's vocab_size {vocab_size}")
    return tokens


class OutputObjective:
    """The model at its base top-k on fixed tokens; scores any per-layer top-k by the mean
    KL(p_base || p_plan) of the next-token distribution (nats per position)."""

    def __init__(self, moe_model: MoEModel, options: ProfileOptions) -> None:
        self.moe_model = moe_model
        self.lm = reference_lm(moe_model)  # at the base top-k
        if options.estimator == "calibration" or options.calibration:
            self.tokens = calibration_tokens(moe_model, options)
        else:
            self.tokens = self_generated_tokens(self.lm, int(moe_model.config.vocab_size), options)
        self.blocks = {spec.index: self.lm.get_submodule(spec.module_path) for spec in moe_model.layers}
        self.block_inputs: dict[int, torch.Tensor] = {}  # layer index -> its MoE block's input [S, L, H] at base

        def recorder(index: int):
            return lambda _module, args: self.block_inputs.__setitem__(index, args[0].detach())

        hooks = [block.register_forward_pre_hook(recorder(index)) for index, block in self.blocks.items()]
        self.base_log_probs = self._log_probs()
        for hook in hooks:
            hook.remove()

    @torch.no_grad()
    def _log_probs(self) -> torch.Tensor:
        """log p of the next token [S, L, V], normalised a sequence at a time in the logits' own
        buffer: at a real vocabulary (152k) the logits of 32 x 128 tokens are 2.5 GB, and every
        whole-tensor temporary would be as large again."""
        logits = self.lm(input_ids=self.tokens, use_cache=False).logits.float()
        for sequence in logits:
            sequence.copy_(F.log_softmax(sequence, dim=-1))
        return logits

    def _set(self, top_k: Mapping[int, int]) -> None:
        for spec in self.moe_model.layers:
            self.blocks[spec.index].attributes = spec.attributes.with_top_k(top_k.get(spec.index, spec.base_top_k))

    def plan_kl(self, ks: list[int]) -> torch.Tensor:
        """`sequence_kl` of a plan given as one k per MoE layer, in order: what refine and the
        guard compare (verify.py)."""
        return self.sequence_kl({spec.index: k for spec, k in zip(self.moe_model.layers, ks)})

    def kl(self, top_k: Mapping[int, int]) -> float:
        """Mean KL(p_base || p_plan) over every position of the tokens."""
        return self.sequence_kl(top_k).mean().item()

    def sequence_kl(self, top_k: Mapping[int, int]) -> torch.Tensor:
        """KL(p_base || p_plan) per token sequence [S], each the mean over its positions."""
        self._set(top_k)
        try:
            log_probs = self._log_probs()
        finally:
            self._set({})
        return torch.stack([(base.exp() * (base - plan)).sum(-1).mean(-1)  # a sequence at a time, as above
                            for base, plan in zip(self.base_log_probs, log_probs)])


def kl_sensitivities(objective: OutputObjective, options: ProfileOptions, progress=None) -> dict[int, dict[int, float]]:
    """{layer index: {k: KL}} for k in k_min..base_top_k (KL(base) = 0), one layer changed at a time."""
    moe_model = objective.moe_model
    result = {}
    for spec in moe_model.layers:
        result[spec.index] = {k: (0.0 if k == spec.base_top_k else objective.kl({spec.index: k}))
                              for k in range(options.k_min, spec.base_top_k + 1)}
        check_finite_values({f"KL(k={k})": v for k, v in result[spec.index].items()},
                            f"{options.estimator} profile, MoE layer {spec.index}")
        if progress is not None:
            progress()
    return result
