"""NAME_generate/1/model.py: greedy decoding over the decoder model NAME through BLS.

Each request is bounded before any work: max_new_tokens at least 1 and at most the server-side
cap (`moe-compile deploy --max-new-tokens`), prompt + new tokens within the model's context
(config.pbtxt's max_positions; 0 where unknown). The prompt goes through the decoder once
(prefill, empty cache), then one token at a time,
the cache carried from each step's present.* to the next step's past_key_values.* inside the
server. It is the loop of moe_compile/validate/generation.py, written again here because a
deployed repository must run where moe-compile is not installed; the server tests prove the
two give the same tokens and logits. Which decoder, and the cache's names, dims and dtypes,
come from config.pbtxt's parameters, written by `moe-compile deploy` from the model file.

    input_ids [B, S] int64, max_new_tokens [1] int32 -> tokens [B, N] int64,
    logits [B, N, vocab] fp32 (the distribution each token was chosen from)
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config["parameters"].items()}
        self.decoder = parameters["decoder_model"]
        self.cache = json.loads(parameters["cache"])
        self.output_names = ["logits", *(entry["present"] for entry in self.cache)]
        self.max_new_tokens = int(parameters["max_new_tokens"])
        self.max_positions = int(parameters["max_positions"])
        self.cpu = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def execute(self, requests):
        responses = []
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            new_tokens = int(pb_utils.get_input_tensor_by_name(request, "max_new_tokens").as_numpy()[0])
            try:
                tokens, logits = self._generate(prompt, new_tokens)
            except pb_utils.TritonModelException as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("tokens", tokens),
                                                         pb_utils.Tensor("logits", logits)]))
        return responses

    def _check_bounds(self, prompt, new_tokens):
        if not 1 <= new_tokens <= self.max_new_tokens:
            raise pb_utils.TritonModelException(
                f"max_new_tokens must be between 1 and {self.max_new_tokens} (this server's cap), not {new_tokens}")
        if prompt.shape[0] < 1 or prompt.shape[1] < 1:
            raise pb_utils.TritonModelException(f"input_ids must hold at least one token, got shape {list(prompt.shape)}")
        positions = prompt.shape[1] + new_tokens - 1  # the last token is never fed back
        if self.max_positions and positions > self.max_positions:
            raise pb_utils.TritonModelException(
                f"{prompt.shape[1]} prompt tokens + {new_tokens} new tokens need {positions} positions; "
                f"the model has {self.max_positions}")

    def _generate(self, prompt, new_tokens):
        self._check_bounds(prompt, new_tokens)
        batch = prompt.shape[0]
        past = {entry["past"]: np.zeros((batch, entry["dims"][0], 0, entry["dims"][2]),
                                        pb_utils.triton_string_to_numpy(entry["data_type"])) for entry in self.cache}
        ids, length, tokens, logits = prompt, 0, [], []
        for _ in range(new_tokens):
            outputs = self._decode(ids, past, length)
            length += ids.shape[1]
            step_logits = outputs["logits"][:, -1].astype(np.float32)  # [B, vocab]
            ids = step_logits.argmax(-1).astype(np.int64)[:, None]
            past = {entry["past"]: outputs[entry["present"]] for entry in self.cache}
            tokens.append(ids)
            logits.append(step_logits[:, None])
        return np.concatenate(tokens, axis=1), np.concatenate(logits, axis=1)

    def _decode(self, ids, past, length):
        batch, step = ids.shape
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, length + step), np.int64),
                "position_ids": np.broadcast_to(np.arange(length, length + step), (batch, step)).copy(), **past}
        request = pb_utils.InferenceRequest(
            model_name=self.decoder, requested_output_names=self.output_names, preferred_memory=self.cpu,
            inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feed.items()])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.decoder}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names}
