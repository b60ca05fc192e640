"""Real service processes for tests (see promptclimb_common.processes)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from promptclimb_common.processes import REPO, as_child, free_port, start_module, stop_process, wait_healthy

__all__ = ["REPO", "free_port", "start_process", "start_redis", "start_scorer", "stop_process", "wait_healthy"]


start_process = start_module


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
    process = start_module(args, log_path, env)
    address = f"127.0.0.1:{port}"
    try:
        wait_healthy(address, process)
    except Exception:
        stop_process(process, signal.SIGKILL)
        raise
    return process, address


def start_redis(work_dir: Path, timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    """Starts Debian's redis-server (`make redis-server` installs it) on a free loopback port, in memory only;
    returns (process, redis:// URL)."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed; `make redis-server` installs Debian's")
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (work_dir / "redis.log").open("ab") as log:
        process = subprocess.Popen(**as_child([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                               "--appendonly", "no", "--dir", str(work_dir)]), cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process, signal.SIGKILL)
            raise RuntimeError(f"redis-server did not answer on port {port}; see {work_dir / 'redis.log'}")
        time.sleep(0.05)
