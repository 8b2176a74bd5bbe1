"""Session fixtures for the deploy tests: one repository of the tiny qwen2_moe (tiny_onnx,
tests/conftest.py), one real Triton Inference Server (where it cannot start: a failure in CI, a
skip elsewhere)."""

import pytest
from served import MODEL, server_unavailable

from moe_compile.errors import MoeCompileError


@pytest.fixture(scope="session")
def served_repo(tiny_onnx, tmp_path_factory):
    from moe_compile.deploy.repository import deploy

    repo = tmp_path_factory.mktemp("served") / "repo"
    deploy(tiny_onnx, repo, MODEL, backend="python", max_batch=8, instances=1)
    return repo


@pytest.fixture(scope="session")
def triton_server(served_repo):
    import importlib.util

    if importlib.util.find_spec("tritonclient") is None:
        server_unavailable("tritonclient is not installed (pip install 'moe-compile[deploy]')")
    from moe_compile.deploy.server import TritonServer

    server = TritonServer(served_repo, startup_timeout=120)
    try:
        server.start()
    except MoeCompileError as exc:
        server_unavailable(str(exc))
    yield server
    server.stop()

