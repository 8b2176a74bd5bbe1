"""A real Triton Inference Server (nvidia-pytriton's tritonserver, python backend) serving the
tiny qwen2_moe: the same logits and tokens as ONNX Runtime here, over HTTP and gRPC."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from served import MODEL, empty_past, server_unavailable

from moe_compile.deploy.client import TritonRunner, generate
from moe_compile.validate.compare import compare_outputs
from moe_compile.validate.generation import decoder_feed, greedy_generate
from moe_compile.validate.runners import OnnxRuntimeRunner
from moe_compile.validate.tolerances import TOLERANCES

PROTOCOLS = ["http", "grpc"]
VOCAB = 96  # tests/tiny_models.py


@pytest.fixture(scope="module")
def local(tiny_onnx):
    return OnnxRuntimeRunner(tiny_onnx)


def _url(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


def _prompt(batch=2, length=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length))


class RecordingRunner:
    """Keeps the last-position logits of every step the generation loop runs."""

    def __init__(self, runner):
        self.runner, self.logits = runner, []

    def infer(self, feed):
        outputs = self.runner.infer(feed)
        self.logits.append(outputs["logits"][:, -1])
        return outputs


def _prefill(local, prompt):
    past_inputs = [i.name for i in local.session.get_inputs() if i.name.startswith("past_key_values.")]
    return decoder_feed(prompt, dict(zip(past_inputs, empty_past(local.session, prompt.shape[0]))), 0)


def _assert_close(expected, got):
    diffs = compare_outputs(expected, got, TOLERANCES["fp32"], list(expected))
    assert all(d.passed for d in diffs), [d for d in diffs if not d.passed]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_logits_and_cache_match_onnx_runtime(triton_server, local, protocol):
    prompt = _prompt()
    prefill = _prefill(local, prompt)
    with TritonRunner(_url(triton_server, protocol), MODEL, protocol) as server:
        expected, got = local.infer(prefill), server.infer(prefill)
        assert list(got) == local.output_names
        _assert_close(expected, got)
        past = {n.replace("present.", "past_key_values."): expected[n] for n in local.output_names[1:]}
        step = decoder_feed(expected["logits"][:, -1].argmax(-1)[:, None], past, prompt.shape[1])
        _assert_close(local.infer(step), server.infer(step))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_generation_in_the_server_equals_local_generation(triton_server, local, protocol):
    prompt, new_tokens = _prompt(seed=1), 32
    reference = RecordingRunner(local)
    tokens = greedy_generate(reference, prompt, new_tokens, empty_past(local.session, 2))
    expected_logits = np.stack(reference.logits[:new_tokens], axis=1)  # [B, N, vocab]
    with TritonRunner(_url(triton_server, protocol), f"{MODEL}_generate", protocol) as server:
        got_tokens, got_logits = generate(server, prompt, new_tokens)
    assert got_tokens.shape == (2, new_tokens) and (got_tokens == tokens).all()
    _assert_close({"logits": expected_logits}, {"logits": got_logits})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_side_generation_through_the_decoder_model(triton_server, local, protocol):
    """The stateless decoder: the client carries the KV cache, step by step, over the network."""
    prompt = _prompt(batch=1, seed=2)
    expected = greedy_generate(local, prompt, 32, empty_past(local.session, 1))
    with TritonRunner(_url(triton_server, protocol), MODEL, protocol) as server:
        assert (greedy_generate(server, prompt, 32, empty_past(local.session, 1)) == expected).all()


def test_eight_concurrent_clients_get_identical_answers(triton_server, local):
    from tritonclient.utils import InferenceServerException

    prompt = _prompt(batch=1, length=5, seed=3)
    feed = _prefill(local, prompt)
    expected = local.infer(feed)["logits"]

    def client(index):
        protocol = PROTOCOLS[index % 2]
        errors, answers = 0, []
        with TritonRunner(_url(triton_server, protocol), MODEL, protocol) as server:
            for _ in range(50):
                try:
                    answers.append(server.infer(feed)["logits"])
                except (InferenceServerException, OSError):  # an error answer, a reset connection
                    errors += 1
        return errors, answers

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(client, range(8)))
    assert sum(errors for errors, _ in results) == 0
    answers = [answer for _, group in results for answer in group]
    assert len(answers) == 400
    assert all(np.array_equal(answer, answers[0]) for answer in answers)
    _assert_close({"logits": expected}, {"logits": answers[0]})


def _raw_infer(server, protocol, tensors):
    """A request exactly as given (no casting): name -> array."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(_url(server, protocol))
    try:
        inputs = []
        for name, value in tensors.items():
            tensor = module.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return client.infer(MODEL, inputs)
    finally:
        client.close()


def _malformed(local):
    feed = _prefill(local, _prompt(batch=1, length=3))
    wrong_shape = dict(feed)
    wrong_shape["past_key_values.0.key"] = np.zeros((1, 3, 0, 8), np.float32)  # 3 heads, the model has 2
    return {"wrong dtype": {**feed, "input_ids": feed["input_ids"].astype(np.float32)},
            "wrong shape": wrong_shape,
            "missing input": {k: v for k, v in feed.items() if k != "attention_mask"}}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", ["wrong dtype", "wrong shape", "missing input"])
def test_malformed_request_gets_an_error_and_the_server_keeps_serving(triton_server, local, protocol, case):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException):
        _raw_infer(triton_server, protocol, _malformed(local)[case])
    assert triton_server.alive() and triton_server.ready()
    good = _malformed(local)["missing input"] | {"attention_mask": np.ones((1, 3), np.int64)}
    assert _raw_infer(triton_server, protocol, good).as_numpy("logits").shape == (1, 3, VOCAB)


def test_generate_refuses_zero_new_tokens(triton_server):
    from tritonclient.utils import InferenceServerException

    with (TritonRunner(triton_server.http_url, f"{MODEL}_generate") as server,
          pytest.raises(InferenceServerException, match="max_new_tokens must be between 1 and 128")):
        generate(server, _prompt(batch=1), 0)
    assert triton_server.ready()


def test_serve_command_starts_and_stops_on_ctrl_c(served_repo):
    from moe_compile.deploy.server import free_ports

    http, grpc = free_ports(2)
    process = subprocess.Popen([sys.executable, "-m", "moe_compile", "serve", "--repo", str(served_repo),
                                "--http-port", str(http), "--grpc-port", str(grpc), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a background job inherits SIGINT ignored; Ctrl-C is what we test
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        if not line:
            server_unavailable(f"moe-compile serve: {process.stderr.read().strip()}")
        assert json.loads(line)["http"] == f"127.0.0.1:{http}"
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/{MODEL}_generate/ready") as response:
            assert response.status == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0  # server.stop: SIGTERM, up to 30 s, then SIGKILL
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def test_a_model_that_cannot_load_stops_the_start_with_the_log_line(triton_server, tiny_onnx, tmp_path):
    from moe_compile.deploy.repository import deploy
    from moe_compile.deploy.server import TritonServer
    from moe_compile.errors import BackendUnavailable

    deploy(tiny_onnx, tmp_path / "repo", "broken")
    (tmp_path / "repo" / "broken" / "1" / "model.onnx").write_text("not a model")
    server = TritonServer(tmp_path / "repo", startup_timeout=120)
    with pytest.raises(BackendUnavailable, match="tritonserver exited with code 1 while starting: .*broken") as info:
        server.start()
    assert len(str(info.value).splitlines()) == 1
    assert not server.alive() and not server.workdir.exists()


def test_without_nvidia_pytriton_serve_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    from moe_compile.cli import main

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "pytriton" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve", "--repo", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [(
        "moe-compile: error: no Triton Inference Server here: pip install 'moe-compile[deploy]' "
        "(nvidia-pytriton bundles tritonserver)")]


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                         ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_a_server_that_cannot_start_fails_in_ci_and_skips_elsewhere(ci, outcome, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no tritonserver binary"):
        server_unavailable("no tritonserver binary")
