"""Child processes of our own services: free ports, start, wait for health, stop.

`reproduce`, the demo and the tests run the real services as processes on
loopback; this is their one way to do it. Every child gets its own process
group (Ctrl-C in a terminal reaches only the parent, which then stops it, and
a stop reaches the child's own children) and dies with its parent, even when
the parent is SIGKILLed: a scorer orphaned on a GPU host would hold the
model's memory while the rerun starts a second one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _libc_prctl() -> Callable[..., int] | None:
    """prctl(2), looked up once here, so that a forked child only has to call it; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl


_PRCTL = _libc_prctl()


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child SIGKILL when the thread that started it ends.

    Start long-lived children from a thread that lives as long as they
    should (the main thread, in our programs).
    """
    parent = os.getpid()

    def arrange() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arrange


def child_options() -> dict:
    """Popen keywords for every child we start: its own process group, and death with its parent."""
    return {"process_group": 0, "preexec_fn": _die_with_parent()}


def start_module(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts `python -m <args>` from the repo root, output to `log_path` (see the module's docstring)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env, **child_options())


def signal_group(pgid: int, sig: int) -> None:
    """Signals a child's process group; one that is already gone is left alone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Sends `sig` to the child's process group, waits up to `timeout` s, then kills the group; returns the exit code."""
    if process.poll() is None:
        signal_group(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
