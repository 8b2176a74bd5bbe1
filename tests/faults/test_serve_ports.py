"""`serve` with a port out of range or in use: one line, exit 2, at once, no temporary folder.
Before, it waited the whole start-up timeout and then reported an unrelated CUDA message, and
each failed start left a temporary folder."""

import socket
import tempfile
import time
from pathlib import Path

import pytest


def _server_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("moe-compile-triton-*")}


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("ports, message", [
    (["--http-port", "70000"], "--http-port: 70000 is not a TCP port (1 to 65535)"),
    (["--grpc-port", "0"], "--grpc-port: 0 is not a TCP port (1 to 65535)"),
    (["--http-port", "-1"], "--http-port: -1 is not a TCP port"),
    (["--http-port", "8123", "--grpc-port", "8123"], "are the same port (8123)"),
], ids=["70000", "0", "negative", "same twice"])
def test_a_bad_port_is_refused_at_once(ports, message, repo, cli):
    before = _server_folders()
    start = time.monotonic()
    outcome = cli("serve", "--repo", repo, *ports)
    outcome.refused(message)
    assert time.monotonic() - start < 2
    assert _server_folders() == before


def test_a_port_in_use_is_refused_at_once(busy_port, repo, cli):
    before = _server_folders()
    start = time.monotonic()
    outcome = cli("serve", "--repo", repo, "--http-port", busy_port)
    outcome.refused(f"--http-port {busy_port}: 127.0.0.1:{busy_port} cannot be used (Address already in use)")
    assert time.monotonic() - start < 2
    assert _server_folders() == before
