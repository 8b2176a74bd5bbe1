"""Is a plan, profile or exported model made for this model? The checks on its fingerprint.

A fingerprint (compiler/loader.py) has `sha256` over the structure (config, tensor names,
dtypes, shapes) and `weights_sha256`, the content hash of the weights (weights_hash.py).
"""

from __future__ import annotations

from moe_compile.errors import InvalidInput

from .ir import MoEModel


def check_same_model(fingerprint: object, moe_model: MoEModel, source: str) -> None:
    """Refuse a file made for another model: another structure, or the same structure with
    other weights (another fine-tune of the same config)."""
    if not isinstance(fingerprint, dict) or "sha256" not in fingerprint:
        raise InvalidInput(f"{source} has no model fingerprint")
    if fingerprint["sha256"] != moe_model.structure["sha256"]:
        raise InvalidInput(
            f"{source} was made for another model ({fingerprint.get('model_type')}, "
            f"sha256 {str(fingerprint['sha256'])[:12]}), not {moe_model.path} "
            f"({moe_model.model_type}, sha256 {moe_model.structure['sha256'][:12]})")
    check_same_weights(fingerprint.get("weights_sha256"), moe_model, source)


def check_same_weights(weights_sha256: object, moe_model: MoEModel, source: str) -> None:
    """`weights_sha256` as recorded in `source` against the content hash of moe_model's weights."""
    if not isinstance(weights_sha256, str):
        raise InvalidInput(f"{source} records no content hash of the weights (made by an older moe-compile?): "
                           "make it again")
    if weights_sha256 != moe_model.fingerprint["weights_sha256"]:
        raise InvalidInput(
            f"{source} was made for other weights (weights sha256 {weights_sha256[:12]}) than those in "
            f"{moe_model.path} (weights sha256 {moe_model.fingerprint['weights_sha256'][:12]}), though the "
            "config and tensor shapes are the same")
