"""Abusive requests to the served NAME_generate model (part of the fault suite, here for the
session's one real server): each is refused at once with a clear error, nothing runs past the
model's context (128 positions for the tiny model) or the server-side cap, a long request does
not make a short one wait for it, and the server answers the next request. Before,
max_new_tokens 2147483647 never returned and kept the server busy, and 1100 tokens ran past
the context without complaint."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from served import MODEL

from moe_compile.deploy.client import TritonRunner, generate

CONTEXT = 128  # tests/tiny_models.py: max_position_embeddings


def _generate(server, prompt_length, new_tokens, batch=1):
    with TritonRunner(server.http_url, f"{MODEL}_generate") as runner:
        return generate(runner, np.ones((batch, prompt_length), np.int64), new_tokens)


def _still_answers(server):
    assert server.alive() and server.ready()
    tokens, _ = _generate(server, 3, 2)
    assert tokens.shape == (1, 2)


ABUSE = {
    "max_new_tokens 2**31-1": (1, 2**31 - 1, f"max_new_tokens must be between 1 and {CONTEXT}"),
    "max_new_tokens negative": (1, -5, f"max_new_tokens must be between 1 and {CONTEXT}"),
    "prompt past the context": (CONTEXT + 1, 1, f"need {CONTEXT + 1} positions; the model has {CONTEXT}"),
    "prompt + new tokens past the context": (100, 40, f"need 139 positions; the model has {CONTEXT}"),
    "empty prompt": (0, 1, "input_ids must hold at least one token"),
}


@pytest.mark.parametrize("prompt_length, new_tokens, message", ABUSE.values(), ids=ABUSE.keys())
def test_abusive_request_is_refused_at_once(triton_server, prompt_length, new_tokens, message):
    from tritonclient.utils import InferenceServerException

    start = time.monotonic()
    with pytest.raises(InferenceServerException, match=message):
        _generate(triton_server, prompt_length, new_tokens)
    assert time.monotonic() - start < 10
    _still_answers(triton_server)


def test_the_whole_context_is_allowed(triton_server):
    tokens, _ = _generate(triton_server, 100, CONTEXT - 99)
    assert tokens.shape == (1, CONTEXT - 99)


def _decoder_steps(statistics) -> int:
    """How many requests the decoder model has executed so far (each decode step is one), asked
    on an open tritonclient `statistics` client."""
    return int(statistics.get_inference_statistics(MODEL)["model_stats"][0]["inference_count"])


def test_a_long_request_does_not_make_a_short_one_wait(triton_server):
    """Two NAME_generate instances: a one-token request sent while a request for the whole
    context (127 decode steps) is in its decode loop gets its answer before the long one ends.
    The short request goes out only once the decoder has run steps of the long one (its
    inference count moved), on a client opened before the long one started, so that what races
    the long one's remaining 125 steps is one short generation, not also a client's start-up
    (which, on a loaded CI machine, once took longer than those steps). The count is watched on
    a client opened before too: a client opened per look once let the long request finish
    between two looks (CI, 2026-12-05); and with faster decode steps it still did once (CI,
    2026-12-06), so a run in which the long request ends first is run again, up to three times."""
    import tritonclient.http as http

    statistics = http.InferenceServerClient(triton_server.http_url)
    try:
        with TritonRunner(triton_server.http_url, f"{MODEL}_generate") as short:
            for _ in range(3):  # the long request may still end between two looks: that run shows nothing
                finished = {}

                def run_long(finished=finished):
                    _generate(triton_server, 1, CONTEXT)
                    finished["long"] = time.monotonic()

                before = _decoder_steps(statistics)
                long = threading.Thread(target=run_long)
                long.start()
                while _decoder_steps(statistics) < before + 2 and long.is_alive():
                    time.sleep(0.001)
                if not long.is_alive():
                    long.join()
                    continue
                generate(short, np.ones((1, 1), np.int64), 1)
                finished["short"] = time.monotonic()
                long.join()
                break
            else:
                pytest.fail("three times the long request ended before the short one could be sent")
    finally:
        statistics.close()
    assert finished["short"] < finished["long"]


@pytest.mark.slow
def test_many_concurrent_clients_each_get_an_answer(triton_server):
    """Sixteen clients at once, half asking for the whole context: all answered, none refused."""
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: _generate(triton_server, 1 + i, CONTEXT - i if i % 2 else 2), range(16)))
    assert [tokens.shape[1] for tokens, _ in results] == [CONTEXT - i if i % 2 else 2 for i in range(16)]
    _still_answers(triton_server)
