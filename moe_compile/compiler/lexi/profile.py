"""LExI stage 1: each MoE layer's sensitivity to a smaller top-k, without any data.

For layer j alone, draw X ~ N(0, scale²) of shape [B*L, H] and measure how far the output
moves when only the best k experts are kept: Δ_j(k) = ||Y_k - Y_base||_F, averaged over N
draws. One pass per draw: route once at the base top-k, run each chosen expert once, and
form every Y_k from those outputs (top-k' is the first k' of the top-k; only the weights
change). Shared experts add the same term to every Y_k and cancel out of Δ.

Estimator "model-aware" (data-free too) shapes X like the block's real input, RMSNorm(X) * gamma
with the block's own pre-MoE norm weight, and reports Δ relative to ||Y_base||_F. The estimators
"self-kl" and "calibration" measure on the model's output instead (kl_profile.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from moe_compile.compiler.fingerprint import check_same_model
from moe_compile.compiler.ir import ExpertWeights, MoELayerSpec, MoEModel
from moe_compile.errors import InvalidInput
from moe_compile.finite import check_finite_values
from moe_compile.grouped_moe_op import choose_experts, expert_outputs_per_slot, routing_weights

from .options import ESTIMATORS, ProfileOptions

PROFILE_SCHEMA = "moe-compile/profile/v1"
_SIGNIFICANT_DIGITS = 6  # Δ is stored and searched at this precision, so files are stable


@dataclass(frozen=True)
class LayerSensitivity:
    index: int
    base_top_k: int
    delta: dict[int, float]  # k -> Δ(k), for k_min..base_top_k; Δ(base_top_k) = 0


@dataclass(frozen=True)
class Profile:
    model: dict  # the fingerprint of the profiled model
    options: ProfileOptions
    layers: list[LayerSensitivity]

    def to_json(self) -> dict:
        return {
            "schema": PROFILE_SCHEMA,
            "model": self.model,
            "options": asdict(self.options),
            "layers": [{"index": layer.index, "base_top_k": layer.base_top_k,
                        "sensitivity": {str(k): d for k, d in sorted(layer.delta.items())}}
                       for layer in self.layers],
        }


def _round(value: float) -> float:
    return float(f"{value:.{_SIGNIFICANT_DIGITS}g}")


def _layer_generator(options: ProfileOptions, index: int) -> torch.Generator:
    """Each layer draws from its own seeded stream, so Δ_j does not depend on other layers."""
    return torch.Generator().manual_seed(options.seed * 1_000_003 + index)


def pre_moe_norm_weight(moe_model: MoEModel, spec: MoELayerSpec) -> torch.Tensor:
    """The gamma of the RMSNorm in front of the MoE block (decoder layer's post_attention_layernorm)."""
    from moe_compile.compiler.checkpoint import SafetensorsCheckpoint

    name = f"{spec.module_path.rpartition('.')[0]}.post_attention_layernorm.weight"
    checkpoint = SafetensorsCheckpoint(moe_model.path)
    if not checkpoint.has(name):
        raise InvalidInput(f"{moe_model.path}: no {name} (the model-aware estimator needs the pre-MoE norm)")
    return checkpoint.read(name).float()


def layer_deltas(spec: MoELayerSpec, weights: ExpertWeights, options: ProfileOptions,
                 norm_weight: torch.Tensor | None = None) -> dict[int, float]:
    """Δ(k) for k in k_min..base_top_k of one layer (fp32 throughout). With `norm_weight` (the
    model-aware estimator) X is RMSNorm(X) * gamma and Δ is relative to ||Y_base||_F."""
    base = spec.attributes
    k_values = range(options.k_min, base.top_k + 1)
    totals = dict.fromkeys(k_values, 0.0)
    generator = _layer_generator(options, spec.index)
    router_bias = None if weights.router_bias is None else weights.router_bias.float()
    with torch.no_grad():
        for _ in range(options.draws):
            x = torch.randn(options.tokens, spec.hidden, generator=generator) * options.scale  # [T, H]
            if norm_weight is not None:
                x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_weight
            logits = F.linear(x, weights.router_weight.float(), router_bias)  # [T, E]
            chosen_scores, experts = choose_experts(logits, base, weights.score_bias)  # [T, k_base] each
            outputs = expert_outputs_per_slot(x, experts, weights.gate_up, weights.down, base,
                                              weights.gate_up_bias, weights.down_bias)  # [T, k_base, H]
            y_base = torch.einsum("tk,tkh->th", routing_weights(chosen_scores, base), outputs)
            reference = torch.linalg.matrix_norm(y_base).item() if norm_weight is not None else 1.0
            for k in k_values:
                y_k = torch.einsum("tk,tkh->th", routing_weights(chosen_scores[:, :k], base.with_top_k(k)),
                                   outputs[:, :k])
                totals[k] += torch.linalg.matrix_norm(y_k - y_base).item() / reference
    deltas = {k: _round(total / options.draws) for k, total in totals.items()}
    check_finite_values({f"Δ(k={k})": d for k, d in deltas.items()}, f"LExI profile, MoE layer {spec.index}")
    return deltas


def check_options(moe_model: MoEModel, options: ProfileOptions) -> None:
    for name in ("batch", "seq_len", "draws", "k_min", "samples"):
        if getattr(options, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1")
    if not options.scale > 0:
        raise InvalidInput(f"--scale must be positive, got {options.scale}")
    if options.estimator not in ESTIMATORS:
        raise InvalidInput(f"--estimator {options.estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if options.calibration and options.estimator != "calibration":
        raise InvalidInput("--calibration FILE goes with --estimator calibration")
    if options.measures_output and options.seq_len < 2:
        raise InvalidInput("--seq-len must be at least 2 for a next-token estimator")
    smallest = min(spec.base_top_k for spec in moe_model.layers)
    if options.k_min > smallest:
        raise InvalidInput(f"--k-min {options.k_min} is above the smallest base top-k ({smallest})")


def profile_model(moe_model: MoEModel, options: ProfileOptions, show_progress: bool = True,
                  objective=None) -> Profile:
    """Stage 1 over every MoE layer: the data-free estimators stream one layer's weights at a
    time; the KL ones run the whole model (`objective`, a kl_profile.OutputObjective, if the
    caller already has one for these options)."""
    from rich.console import Console
    from rich.progress import Progress

    check_options(moe_model, options)
    layers = []
    console = Console(stderr=True)  # stdout may carry --json
    with Progress(console=console, transient=True, disable=not (show_progress and console.is_terminal)) as progress:
        task = progress.add_task(f"{options.estimator} profile", total=len(moe_model.layers))
        if options.measures_output:
            from .kl_profile import OutputObjective, kl_sensitivities

            objective = objective or OutputObjective(moe_model, options)
            table = kl_sensitivities(objective, options, lambda: progress.advance(task))
            layers = [LayerSensitivity(spec.index, spec.base_top_k, {k: _round(v) for k, v in table[spec.index].items()})
                      for spec in moe_model.layers]
            return Profile(moe_model.fingerprint, options, layers)
        for spec in moe_model.layers:
            progress.update(task, description=f"LExI profile: layer {spec.index}")
            norm_weight = pre_moe_norm_weight(moe_model, spec) if options.estimator == "model-aware" else None
            weights = spec.load_weights()
            layers.append(LayerSensitivity(spec.index, spec.base_top_k,
                                           layer_deltas(spec, weights, options, norm_weight)))
            del weights  # before the next layer is read
            progress.advance(task)
    return Profile(moe_model.fingerprint, options, layers)


def profile_from_json(doc: object, moe_model: MoEModel, source: str, options: ProfileOptions) -> Profile:
    """A saved profile, checked against the model and the k range the plan needs."""
    if not isinstance(doc, dict) or doc.get("schema") != PROFILE_SCHEMA:
        raise InvalidInput(f"{source} is not a moe-compile profile (schema {PROFILE_SCHEMA!r} expected)")
    check_same_model(doc.get("model"), moe_model, source)
    try:
        saved = ProfileOptions(**{"temperature": 1.0, **doc["options"]})  # recorded since it became 1.5
        layers = [LayerSensitivity(int(layer["index"]), int(layer["base_top_k"]),
                                   {int(k): float(d) for k, d in layer["sensitivity"].items()})
                  for layer in doc["layers"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"{source} is malformed ({exc.__class__.__name__}: {exc})") from None
    if [layer.index for layer in layers] != [spec.index for spec in moe_model.layers]:
        raise InvalidInput(f"{source} does not list this model's MoE layers")
    for layer in layers:
        check_finite_values({f"Δ(k={k})": d for k, d in layer.delta.items()}, f"{source}, MoE layer {layer.index}")
    if saved.k_min > options.k_min:
        raise InvalidInput(f"{source} was profiled from k={saved.k_min}; the plan asks for --k-min {options.k_min}")
    return Profile(doc["model"], saved, layers)
