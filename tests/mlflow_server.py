"""A real MLflow tracking server for the tests (`mlflow server`, from the full `mlflow` package in the dev extra).

It runs in its own process group on 127.0.0.1 with a SQLite backend store in a temporary folder; it can be
stopped and started again on the same port and store, to test that records wait while MLflow is down.
First start ~10 s (it creates its schema), a restart ~5 s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

VENV_BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_command() -> str | None:
    """The `mlflow` CLI of the full package (mlflow-skinny's cannot serve: no Flask)."""
    for candidate in (VENV_BIN / "mlflow", shutil.which("mlflow")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def server_available() -> bool:
    try:
        import flask  # noqa: F401
        import mlflow.server  # noqa: F401
    except ImportError:
        return False
    return mlflow_command() is not None


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    def start(self, timeout: float = 90) -> MlflowServer:
        command = mlflow_command()
        assert command, "the full mlflow package is not installed"
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [command, "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                 "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1"],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server and its uvicorn child (its own process group), waiting until the port is free."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The uvicorn child may outlive its parent by a moment.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/health", timeout=0.5)
            except httpx.TransportError:
                break
            time.sleep(0.1)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: Any) -> Iterator[MlflowServer]:
    if not server_available():
        pytest.skip("the full mlflow package (dev extra) is not installed")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()
