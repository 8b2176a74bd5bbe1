"""tritonclient over HTTP or gRPC, behind the runners' interface (validate/runners/): named
numpy in, named numpy out. `TritonRunner` on the decoder model plugs into the same greedy
loop and comparison as the local runners; `generate` calls the NAME_generate model.
"""

from __future__ import annotations

import numpy as np

from moe_compile.errors import BackendUnavailable

PROTOCOLS = ("http", "grpc")


def _client_module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise BackendUnavailable("tritonclient is not installed: pip install 'moe-compile[deploy]'") from None
    return module


class TritonRunner:
    """One model on a Triton server. Inputs are cast to the dtypes the server declares for them."""

    def __init__(self, url: str, model: str, protocol: str = "http") -> None:
        from tritonclient.utils import triton_to_np_dtype

        self.name = f"triton-{protocol}"
        self.module = _client_module(protocol)
        self.client = self.module.InferenceServerClient(url)
        self.model = model
        metadata = self.client.get_model_metadata(model)
        if protocol == "grpc":  # a protobuf message; the HTTP client returns a dict
            metadata = {"inputs": [{"name": t.name, "datatype": t.datatype} for t in metadata.inputs],
                        "outputs": [{"name": t.name} for t in metadata.outputs]}
        self.input_types = {t["name"]: (t["datatype"], triton_to_np_dtype(t["datatype"])) for t in metadata["inputs"]}
        self.output_names = [t["name"] for t in metadata["outputs"]]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, value in feed.items():
            datatype, dtype = self.input_types.get(name, (None, value.dtype))
            value = np.ascontiguousarray(value.astype(dtype, copy=False))
            tensor = self.module.InferInput(name, list(value.shape), datatype or _triton_type(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [self.module.InferRequestedOutput(name) for name in self.output_names]
        result = self.client.infer(self.model, inputs, outputs=outputs)
        return {name: _widen(result.as_numpy(name)) for name in self.output_names}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _triton_type(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(dtype)


def _widen(array: np.ndarray) -> np.ndarray:
    """fp16 outputs compare as fp32, as OnnxRuntimeRunner returns them."""
    return array.astype(np.float32) if array.dtype == np.float16 else array


def generate(runner: TritonRunner, prompt: np.ndarray, new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy generation inside the server (NAME_generate): (tokens [B, N], logits [B, N, vocab])."""
    outputs = runner.infer({"input_ids": prompt.astype(np.int64), "max_new_tokens": np.array([new_tokens], np.int32)})
    return outputs["tokens"], outputs["logits"]
