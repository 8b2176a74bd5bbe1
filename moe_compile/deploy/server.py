"""A real Triton Inference Server on loopback: the `tritonserver` binary bundled in the
nvidia-pytriton wheel (with its python backend), for `moe-compile serve` and the tests.

    copy the wheel's tritonserver folder to a work folder -> put the python backend stub for
    this interpreter into backends/python/ -> LD_LIBRARY_PATH: the interpreter's LIBDIR, then
    the wheel's bundled libraries -> this interpreter's bin first on PATH (the stub runs the
    models with this Python and its packages) -> start on free ports -> wait until ready

The server's log goes to a file in the work folder; when the server cannot start, its last
error line is the message.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from moe_compile.errors import BackendUnavailable, InvalidInput

INSTALL_HINT = "pip install 'moe-compile[deploy]' (nvidia-pytriton bundles tritonserver)"


def _bundled_server() -> tuple[Path, Path, Path]:
    """(tritonserver folder, python backend stub for this Python, bundled libraries) of the wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise BackendUnavailable(f"no Triton Inference Server here: {INSTALL_HINT}")
    package = Path(spec.origin).parent
    server = package / "tritonserver"
    stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not (server / "bin" / "tritonserver").is_file() or not stub.is_file():
        raise BackendUnavailable(f"nvidia-pytriton at {package} has no tritonserver for Python "
                                 f"{sys.version_info.major}.{sys.version_info.minor}")
    return server, stub, package.parent / "nvidia_pytriton.libs"


def free_ports(count: int) -> list[int]:
    """`count` different loopback ports that are free now (all held open until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def check_ports_free(ports: dict[str, int]) -> None:
    """InvalidInput, at once, unless every named port is a distinct port that 127.0.0.1 can listen
    on now: tritonserver would otherwise start, fail to bind and be waited for until the timeout."""
    if len(set(ports.values())) < len(ports):
        raise InvalidInput(f"{' and '.join(ports)} are the same port ({next(iter(ports.values()))}); give two ports")
    for option, port in ports.items():
        if not 1 <= port <= 65535:
            raise InvalidInput(f"{option} {port} is not a TCP port (1 to 65535)")
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise InvalidInput(f"{option} {port}: 127.0.0.1:{port} cannot be used ({exc.strerror}); "
                                   "give a free port") from None


class TritonServer:
    """`with TritonServer(repo) as server:` serves `repo` until the block ends."""

    def __init__(self, repo: str | Path, http_port: int = 0, grpc_port: int = 0, startup_timeout: float = 120.0):
        self.repo = Path(repo)
        if not self.repo.is_dir():
            raise InvalidInput(f"--repo {self.repo} is not a folder (write one with `moe-compile deploy`)")
        check_ports_free({option: port for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port))
                          if port})
        spare = iter(free_ports(2))
        self.http_port = http_port or next(spare)
        self.grpc_port = grpc_port or next(spare)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "tritonserver.log"

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        server, stub, libs = _bundled_server()
        self.workdir = Path(tempfile.mkdtemp(prefix="moe-compile-triton-"))
        home = self.workdir / "tritonserver"
        shutil.copytree(server, home, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(stub, home / "backends" / "python" / stub.name)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"), str(libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        command = [str(home / "bin" / "tritonserver"), f"--model-repository={self.repo.resolve()}",
                   f"--backend-directory={home / 'backends'}", "--http-address=127.0.0.1",
                   "--grpc-address=127.0.0.1", f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
                   "--allow-metrics=false", "--disable-auto-complete-config",
                   "--exit-timeout-secs=10"]  # in-flight requests get 10 s on shutdown, not 30
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.workdir, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailable(f"tritonserver exited with code {self.process.returncode} while starting: "
                                         f"{self._last_error()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise BackendUnavailable(f"tritonserver was not ready after {self.startup_timeout:g} s: {self._last_error()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _last_error(self) -> str:
        """The log's last error line (Triton's start with E and a date), else its last line; a
        python traceback the server quotes in it (as literal \\n) is cut off."""
        lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line[:1] == "E" and line[1:5].isdigit()]
        return (errors or lines or ["(empty log)"])[-1].split("\\n")[0]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server has not exited in 30 s; remove the work folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
