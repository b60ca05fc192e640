"""Real service processes for tests: free ports, start, wait for health, stop."""

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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


def start_process(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts `python -m ...args` from the repo root, logging to `log_path`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process by stop_process
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    process.log_file = log  # type: ignore[attr-defined]
    return process


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.log_file.close()  # type: ignore[attr-defined]
    return process.returncode


def start_scorer(
    model_dir: Path, tasks: dict[str, Path], cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """Starts the real scorer on a free loopback port; returns (process, address)."""
    port = free_port()
    args = ["scorer_service", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", "0", "--cache-dir", str(cache_dir), "--state-dir", str(cache_dir.with_name(cache_dir.name + "-state")),
            *extra]
    for task_id, root in tasks.items():
        args += ["--task", f"{task_id}={root}"]
    process = start_process(args, log_path, env)
    address = f"127.0.0.1:{port}"
    try:
        wait_healthy(address, process)
    except Exception:
        stop_process(process, signal.SIGKILL)
        raise
    return process, address
