"""Ports and servers for tests: a free port on 127.0.0.1, waiting for a process to listen on it, and a
server run in its own process group and stopped (that group only) afterwards."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def script(name: str) -> str:
    """The console script `name` of this interpreter's environment (not another on PATH), else PATH's."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name) or name


def free_port() -> int:
    """Free now, so nothing listens there until a test starts a server on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Return once 127.0.0.1:port accepts connections; fail (with the log) if proc exits or time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.time() < deadline, Path(log).read_text()[-3000:]
            time.sleep(0.5)


# `mlflow server` otherwise starts seven job-queue consumers (MLflow 3's server jobs), which tests never use and
# which cost seconds of CPU and a GiB of memory on a 2-core machine
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def server(cmd: list[str], port: int, log: Path, env: dict | None = None):
    """Run cmd in its own process group (with `env` added to the environment), logging to log; yield once it
    listens on port; then stop that group."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **SERVER_ENV, **(env or {})})
        try:
            wait_for_port(port, proc, log)
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
