"""NAME/1/model.py: the stateless decoder, our ONNX file run by ONNX Runtime in the python backend.

For Triton servers that have the python backend but not the ONNX Runtime one. Inputs and
outputs are the ONNX graph's own (input_ids, attention_mask, position_ids, past_key_values.*
-> logits, present.*); the server has checked their names, dtypes and dims against
config.pbtxt before `execute` sees a request. Requests are run one by one: each carries its
own batch, and requests with different cache lengths cannot share a batch anyway.
"""

import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "0"))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(os.path.join(folder, parameters["onnx_file"]), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        return [self._run(request) for request in requests]

    def _run(self, request):
        feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as exc:  # ONNX Runtime's own error types: answer this request with the error
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ONNX Runtime: {exc}"))
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, out) for name, out in zip(self.output_names, outputs)])
