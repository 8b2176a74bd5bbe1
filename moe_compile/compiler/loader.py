"""MODEL -> MoE IR: resolve the folder, read its config, pick the adapter, index the weights.

Only config.json and the safetensors headers are read here; expert weights stay on disk
until a layer's `load_weights()` is called.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from moe_compile.errors import InvalidInput, one_line
from moe_compile.finite import check_finite_parameters
from moe_compile.jsonio import read_json_object

from .adapters import MoEAdapter, adapter_class
from .checkpoint import ReadMeter, SafetensorsCheckpoint
from .ir import ExpertWeights, MoELayerSpec, MoEModel
from .shapes import check_expert_shapes, check_layer_count, check_module_shapes

DEMO = "demo"
BUILT_IN_NAMES = (DEMO, "demo-deepseek")  # moe_compile/compiler/demo.py's models


def resolve_model_folder(model: str | Path) -> Path:
    """`demo` or `demo-deepseek` -> the built-in model's folder; anything else must be a local folder."""
    if str(model) in BUILT_IN_NAMES:
        from .demo import demo_model_folder

        return demo_model_folder(str(model))
    folder = Path(model)
    if not folder.exists():
        raise InvalidInput(f"model folder '{folder}' does not exist (give a local Hugging Face model folder, "
                           "or 'demo' or 'demo-deepseek')")
    if not folder.is_dir():
        raise InvalidInput(f"'{folder}' is a file, not a model folder (expected a folder with config.json and *.safetensors)")
    return folder


def read_config_dict(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise InvalidInput(f"{folder} has no config.json: not a Hugging Face model folder")
    config = read_json_object(path, "config")
    if "model_type" not in config:
        raise InvalidInput(f"{path} has no 'model_type'")
    return config


def build_config(config_dict: dict, path: Path) -> Any:
    """The transformers config object (for its defaults), without any remote code."""
    from transformers import AutoConfig

    fields = {key: value for key, value in config_dict.items() if key != "model_type"}
    try:
        return AutoConfig.for_model(config_dict["model_type"], **fields)
    except Exception as exc:  # transformers raises many kinds for bad values
        raise InvalidInput(f"{path} is not a valid {config_dict['model_type']} config ({one_line(exc)})") from None


def fingerprint(model_type: str, config_dict: dict, checkpoint: SafetensorsCheckpoint, layers: list[MoELayerSpec],
                num_hidden_layers: int) -> dict:
    """The model's structure (config, tensor names/dtypes/shapes), from headers alone; the
    content hash of the weights is added lazily (MoEModel.fingerprint)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config_dict, sort_keys=True).encode())
    digest.update(json.dumps(checkpoint.signature()).encode())
    return {
        "model_type": model_type,
        "num_hidden_layers": num_hidden_layers,
        "moe_layers": [spec.index for spec in layers],
        "num_experts": sorted({spec.num_experts for spec in layers}),
        "sha256": digest.hexdigest(),
    }


def _load_layer(adapter: MoEAdapter, checkpoint: SafetensorsCheckpoint, index: int) -> ExpertWeights:
    """One layer's weights; their shapes were checked from the headers (shapes.py) when the model was read."""
    weights = adapter.read_weights(checkpoint, index)
    for tensor in weights.tensors():
        checkpoint.meter.track(tensor)
    return weights


def _layer_spec(adapter: MoEAdapter, checkpoint: SafetensorsCheckpoint, index: int) -> MoELayerSpec:
    num_experts = adapter.num_experts()
    attributes = adapter.attributes()
    try:
        attributes.validate(num_experts)
    except InvalidInput as exc:
        raise InvalidInput(f"config.json, layer {index}: {exc}") from None
    adapter.check_checkpoint(checkpoint, index)
    check_expert_shapes(adapter, checkpoint, index)
    return MoELayerSpec(
        index=index,
        module_path=adapter.block_path(index),
        hidden=adapter.config_int("hidden_size"),
        intermediate=adapter.intermediate(),
        num_experts=num_experts,
        attributes=attributes,
        shared_expert=adapter.shared_expert(),
        parameter_bytes=checkpoint.nbytes(adapter.checkpoint_prefix(index)),
        load_weights=functools.partial(_load_layer, adapter, checkpoint, index),
        has_score_bias=adapter.has_score_bias(),
    )


def load_moe_model(model: str | Path, meter: ReadMeter | None = None) -> MoEModel:
    """Read MODEL into the MoE IR (headers only; see the module docstring)."""
    folder = resolve_model_folder(model)
    config_dict = read_config_dict(folder)
    model_type = config_dict["model_type"]
    adapter = adapter_class(model_type)(build_config(config_dict, folder / "config.json"))
    num_hidden_layers = adapter.config_int("num_hidden_layers")
    moe_indices = [index for index in range(num_hidden_layers) if adapter.is_moe_layer(index)]
    if not moe_indices:
        raise InvalidInput(f"{folder}: this {model_type} model has no MoE layers (nothing for moe-compile to do)")
    checkpoint = SafetensorsCheckpoint(folder, meter)
    check_layer_count(checkpoint, num_hidden_layers)
    layers = [_layer_spec(adapter, checkpoint, index) for index in moe_indices]
    check_module_shapes(adapter.config, checkpoint)
    return MoEModel(
        model_type=model_type, path=folder, config=adapter.config, num_hidden_layers=num_hidden_layers,
        layers=layers, structure=fingerprint(model_type, config_dict, checkpoint, layers, num_hidden_layers),
        adapter=adapter, weights_digest=checkpoint.content_sha256)


def load_causal_lm(moe_model: MoEModel, dtype: Any = None) -> Any:
    """The full transformers model of a MoE IR's folder (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            moe_model.path, config=moe_model.config, dtype=dtype, local_files_only=True,
            use_safetensors=True, trust_remote_code=False).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"{moe_model.path}: cannot load the model ({one_line(exc)})") from None
    try:
        check_finite_parameters(model, str(moe_model.path))
    except InvalidInput:  # transformers may have renamed or fused it: name the tensor as the checkpoint stores it
        checkpoint = SafetensorsCheckpoint(moe_model.path)
        for name in sorted(checkpoint.index):
            checkpoint.read(name)  # refuses the first non-finite tensor, by its stored name and file
        raise
    return model
