"""What the deploy tests share besides fixtures: the served model's name, an empty cache, and
what happens when the server cannot start."""

import numpy as np

MODEL = "tiny"


def empty_past(onnx_session, batch: int) -> list[np.ndarray]:
    """A past of length 0 in the shapes the ONNX graph declares ([batch, heads, 0, dim])."""
    return [np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in onnx_session.get_inputs() if i.name.startswith("past_key_values.")]


def server_unavailable(reason: str):
    """A server that cannot start: a failure in CI (env CI set: GitHub Actions, GitLab and
    .ci/run set it), where the test extra installs tritonclient and nvidia-pytriton's server and
    a start that fails is a bug; a skip, with the reason, on a developer's machine."""
    import os

    import pytest

    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"Triton Inference Server did not start in CI: {reason}")
    pytest.skip(f"Triton Inference Server cannot start on this machine: {reason}")
