"""Triton `config.pbtxt` files, built as tritonclient's `model_config_pb2.ModelConfig` protobuf
and written with protobuf's text_format: the server's own schema checks every field name, and
`read_config` parses a file back the way the server does.

Two models per deployment (see docs/deploy.md):

    NAME           the stateless decoder: input_ids, attention_mask, position_ids and the past
                   KV cache in; logits and the present KV cache out (the client carries the cache)
    NAME_generate  python backend (BLS): greedy decoding over NAME, token ids in, tokens out
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_compile.errors import BackendUnavailable, InvalidInput, one_line
from moe_compile.export.decoder import past_names, present_names

from .signature import ModelSignature, TensorSpec

BACKENDS = ("tensorrt", "onnxruntime", "python")
MODEL_FILES = {"tensorrt": "model.plan", "onnxruntime": "model.onnx", "python": "model.py"}
GENERATE_SUFFIX = "_generate"
DECODER_INPUTS = ("input_ids", "attention_mask", "position_ids")
DEFAULT_MAX_NEW_TOKENS = 1024  # the server-side cap on one NAME_generate request
MIN_GENERATE_INSTANCES = 2  # one long request cannot hold the only instance while others wait


def _pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BackendUnavailable("writing Triton configs needs tritonclient: pip install 'moe-compile[deploy]'") from None
    return model_config_pb2


def check_decoder(signature: ModelSignature, source: Path) -> int:
    """The number of layers of a moe-compile decoder (ONNX or engine, I/O in any order);
    InvalidInput otherwise."""
    inputs = {spec.name for spec in signature.inputs}
    outputs = {spec.name for spec in signature.outputs}
    num_layers = (len(inputs) - len(DECODER_INPUTS)) // 2
    if (num_layers < 1 or inputs != {*DECODER_INPUTS, *past_names(num_layers)}
            or outputs != {"logits", *present_names(num_layers)}):
        raise InvalidInput(f"{source} is not a moe-compile decoder (expected inputs input_ids, attention_mask, "
                           "position_ids, past_key_values.N.key/value; outputs logits, present.N.key/value)")
    return num_layers


def _add_batched(field, specs: tuple[TensorSpec, ...], source: Path) -> None:
    """Add `specs` to a config's input or output list. Triton's dims leave the batch axis out
    when max_batch_size > 0, so the model's first axis must be a dynamic batch axis."""
    for spec in specs:
        if not spec.dims or spec.dims[0] != -1:
            raise InvalidInput(f"{source}: tensor '{spec.name}' has no dynamic batch axis (dims {list(spec.dims)})")
        field.add(name=spec.name, data_type=_pb2().DataType.Value(spec.data_type), dims=spec.dims[1:])


def decoder_config(name: str, backend: str, signature: ModelSignature, max_batch: int, instances: int,
                   source: Path):
    """The decoder model's config for `backend`, its I/O taken from the model file itself."""
    pb2 = _pb2()
    group = pb2.ModelInstanceGroup
    kind = {"tensorrt": group.KIND_GPU, "onnxruntime": group.KIND_AUTO, "python": group.KIND_CPU}[backend]
    config = pb2.ModelConfig(name=name, max_batch_size=max_batch)
    if backend == "python":
        config.backend = "python"
        config.parameters["onnx_file"].string_value = MODEL_FILES["onnxruntime"]
        config.parameters["intra_op_threads"].string_value = "0"  # 0: ONNX Runtime's default
    else:
        config.platform = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}[backend]
    config.default_model_filename = MODEL_FILES[backend]
    _add_batched(config.input, signature.inputs, source)
    _add_batched(config.output, signature.outputs, source)
    config.dynamic_batching.SetInParent()
    config.instance_group.add(count=instances, kind=kind)
    return config


def generate_config(decoder: str, signature: ModelSignature, instances: int, max_new_tokens: int,
                    max_positions: int | None):
    """NAME_generate: greedy decoding over the decoder model through BLS (python backend). Each
    request is bounded: at most `max_new_tokens`, and prompt + new tokens within `max_positions`
    (the model's context; None where the file does not say, as for an engine). At least
    MIN_GENERATE_INSTANCES instances, so one long request cannot make the others wait for it."""
    pb2 = _pb2()
    num_layers = len(signature.outputs) // 2  # logits + key and value per layer (check_decoder)
    vocab = signature.output("logits").dims[-1]
    config = pb2.ModelConfig(name=decoder + GENERATE_SUFFIX, backend="python", max_batch_size=0)
    config.input.add(name="input_ids", data_type=pb2.TYPE_INT64, dims=[-1, -1])
    config.input.add(name="max_new_tokens", data_type=pb2.TYPE_INT32, dims=[1])
    config.output.add(name="tokens", data_type=pb2.TYPE_INT64, dims=[-1, -1])
    config.output.add(name="logits", data_type=pb2.TYPE_FP32, dims=[-1, -1, vocab])
    past = {spec.name: spec for spec in signature.inputs}
    cache = [{"past": p, "present": q, "dims": list(past[p].dims[1:]), "data_type": past[p].data_type}
             for p, q in zip(past_names(num_layers), present_names(num_layers))]
    config.parameters["decoder_model"].string_value = decoder
    config.parameters["cache"].string_value = json.dumps(cache)
    config.parameters["max_new_tokens"].string_value = str(max_new_tokens)
    config.parameters["max_positions"].string_value = str(max_positions or 0)  # 0: not known
    config.instance_group.add(count=max(instances, MIN_GENERATE_INSTANCES), kind=pb2.ModelInstanceGroup.KIND_CPU)
    return config


def max_positions(signature: ModelSignature, source: Path) -> int | None:
    """The model's context from an exported file's metadata (None for an engine or an older file)."""
    text = signature.metadata.get("moe_compile.max_positions")
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"{source}: moe_compile.max_positions metadata {text!r} is not a positive integer")
    return int(text)


def config_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def read_config(path: str | Path):
    """Parse a config.pbtxt into a ModelConfig, as the server does; InvalidInput if it cannot."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(), _pb2().ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise InvalidInput(f"{path}: not a Triton model config ({one_line(exc)})") from None
