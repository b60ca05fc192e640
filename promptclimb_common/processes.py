"""Child processes of our own services: free ports, start, wait for health, stop.

The demo and the tests run the real services as processes on loopback; this is
their one way to do it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(address: str, process: subprocess.Popen | None = None, timeout: float = 120.0, service: str = "") -> None:
    """Polls grpc.health.v1 until SERVING; fails early if the process exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before {address} became healthy")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} not healthy after {timeout} s")


def start_module(args: list[str], log_path: Path, env: dict | None = None, own_session: bool = False) -> subprocess.Popen:
    """Starts `python -m <args>` from the repo root, output to `log_path`.

    `own_session` keeps Ctrl-C in a terminal from reaching the child, so the
    parent decides when and how it stops.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, start_new_session=own_session)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Sends `sig`, waits up to `timeout` s, then kills; returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
