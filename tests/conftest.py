import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config, items):
    reasons = {
        "gpu": None if _has_cuda() else "no CUDA GPU on this machine",
        "tensorrt": None if _has_tensorrt() else "TensorRT is not installed",
        "slow": None if os.environ.get("MOE_COMPILE_SLOW") == "1" else "slow test: set MOE_COMPILE_SLOW=1",
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """One saved tiny random model folder per architecture (see tiny_models.py)."""
    from tiny_models import TINY_CONFIGS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    folders = {}
    for model_type in TINY_CONFIGS:
        save_tiny_model(model_type, root / model_type)
        folders[model_type] = root / model_type
    return folders
