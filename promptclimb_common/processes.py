"""Child processes of our own services: start on ports of the kernel's choice, wait until serving, stop.

`reproduce`, the demo and the tests run the real services as processes on
loopback; this is their one way to do it. Nobody picks a port for a child
(a port found free and released can be taken before the child binds it):
our services bind port 0 and write what they bound to a port file
(`start_service`); a server of someone else's binds a port we hold
(`held_port`). Every child gets its own process
group (Ctrl-C in a terminal reaches only the parent, which then stops it, and
a stop reaches the child's own children) and dies with its parent, even when
the parent is SIGKILLed: a scorer orphaned on a GPU host would hold the
model's memory while the rerun starts a second one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from promptclimb_common.port_file import BoundPorts

REPO = Path(__file__).resolve().parents[1]
ON_LINUX = sys.platform.startswith("linux")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def held_port(host: str = LOOPBACK) -> Iterator[int]:
    """A port held for a server that cannot bind port 0 and tell us (redis-server, prometheus), or that
    must come back on the same port after a restart.

    The kernel picks it for a socket that binds it with SO_REUSEADDR and never
    listens: connecting to it is refused, as to a closed port; a server that
    binds with SO_REUSEADDR (gRPC, redis, Go's and Python's HTTP servers all
    do) may listen on it while we hold it; and while we hold it the kernel
    gives it to no one else's port-0 bind, nor to a bind without SO_REUSEADDR.
    """
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((host, 0))
        yield holder.getsockname()[1]


def wait_for_ports(port_file: Path, process: subprocess.Popen, timeout: float = 120.0) -> BoundPorts:
    """Waits for the port file of a child started with `--port-file` (written once it serves); fails early if it
    exits."""
    deadline = time.monotonic() + timeout
    while (ports := BoundPorts.read(port_file)) is None:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before writing {port_file}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {port_file} after {timeout} s")
        time.sleep(0.05)
    return ports


def wait_healthy(
    address: str, process: subprocess.Popen | None = None, timeout: float = 120.0, service: str = ""
) -> None:
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
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
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
        return subprocess.Popen(
            **as_child([sys.executable, "-m", *args]),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )


@dataclass(frozen=True)
class Service:
    """One of our services running as a child on loopback."""

    process: subprocess.Popen
    ports: BoundPorts

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"


def start_service(
    args: list[str],
    log_path: Path,
    env: dict | None = None,
    *,
    port: int = 0,
    metrics: bool = False,
    timeout: float = 120.0,
) -> Service:
    """Starts one of our services (`python -m <args>`) on loopback, on ports of the kernel's choice; returns once
    it serves.

    `port` is the gRPC port (0: the kernel's pick; another: one the caller
    holds, see held_port). `metrics` serves /metrics too, on a port of the
    kernel's choice. The port file lies beside the log. On failure the child is killed.
    """
    port_file = log_path.with_name(f"{log_path.stem}.ports.json")
    port_file.unlink(missing_ok=True)  # a previous start's
    process = start_module(
        [
            *args,
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--metrics-port",
            "0" if metrics else "off",
            "--port-file",
            str(port_file),
        ],
        log_path,
        env,
    )
    try:
        return Service(process, wait_for_ports(port_file, process, timeout))
    except BaseException:
        stop_process(process, signal.SIGKILL)
        raise


def signal_group(pgid: int, sig: int) -> None:
    """Signals a child's process group; one that is already gone is left alone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Sends `sig` to the child's process group, waits up to `timeout` s, then kills the group; returns the exit
    code."""
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
