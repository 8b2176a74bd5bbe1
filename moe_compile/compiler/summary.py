"""What `moe-compile inspect` reports about a model's MoE layers (DESIGN.md's keys)."""

from __future__ import annotations

from .ir import MoEModel


def model_summary(moe_model: MoEModel, planned_top_k: dict[int, int] | None = None) -> dict:
    """DESIGN.md's inspect keys; with a plan, each layer also gets its `planned_top_k`."""
    summary = {
        "model": str(moe_model.path),
        "model_type": moe_model.model_type,
        "num_hidden_layers": moe_model.num_hidden_layers,
        "fingerprint": moe_model.structure,  # without the weights' content hash: inspect reads headers only
        "layers": [
            {
                "index": spec.index,
                "experts": spec.num_experts,
                "top_k": spec.base_top_k,
                "hidden": spec.hidden,
                "intermediate": spec.intermediate,
                "shared_intermediate": spec.shared_expert.intermediate if spec.shared_expert else 0,
                "parameter_bytes": spec.parameter_bytes,
                "scoring": spec.attributes.scoring,
                "normalize_topk": spec.attributes.normalize_topk,
                "routed_scaling": spec.attributes.routed_scaling,
                "activation": spec.attributes.activation,
                "n_group": spec.attributes.n_group,
                "topk_group": spec.attributes.topk_group,
            }
            for spec in moe_model.layers
        ],
    }
    if planned_top_k is not None:
        for layer in summary["layers"]:
            layer["planned_top_k"] = planned_top_k[layer["index"]]
    return summary
