"""What the deploy tests share besides fixtures: the served model's name and an empty cache."""

import numpy as np

MODEL = "tiny"


def empty_past(onnx_session, batch: int) -> list[np.ndarray]:
    """A past of length 0 in the shapes the ONNX graph declares ([batch, heads, 0, dim])."""
    return [np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in onnx_session.get_inputs() if i.name.startswith("past_key_values.")]
