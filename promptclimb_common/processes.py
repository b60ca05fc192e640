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
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ON_LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_healthy(address: str, process: subprocess.Popen | None = None, timeout: float = 120.0, service: str = "") -> None:
    """Polls grpc.health.v1 until SERVING; fails early if the process exits."""
    import grpc  # here, not at the top: the exec wrapper (__main__) imports this module before every child
    from grpc_health.v1 import health_pb2, health_pb2_grpc

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


def as_child(command: list[str]) -> dict:
    """Popen keywords, the command included, for every child we start: its own process group, and death with us.

    The command runs behind this module's exec wrapper (`__main__` below),
    which asks the kernel for SIGKILL when our thread that started it ends,
    then becomes the command. Start long-lived children from a thread that
    lives as long as they should (the main thread, in our programs). A
    wrapper rather than a preexec_fn, because a preexec_fn makes Popen fork
    (not vfork) a process whose gRPC threads then log about the fork.
    """
    if ON_LINUX:
        command = [sys.executable, "-m", "promptclimb_common.processes", str(os.getpid()), *command]
    return {"args": command, "process_group": 0}


def start_module(args: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts `python -m <args>` from the repo root, output to `log_path` (see the module's docstring)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(**as_child([sys.executable, "-m", *args]), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env)


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


def _become_child(parent: int, command: list[str]) -> None:
    """The exec wrapper of as_child: SIGKILL when `parent`'s starting thread ends, kept across exec; then `command`."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # libc's, through the process's own symbols
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(f"the parent {parent} of {command[0]} is gone")
    os.execvp(command[0], command)


if __name__ == "__main__":
    _become_child(int(sys.argv[1]), sys.argv[2:])
