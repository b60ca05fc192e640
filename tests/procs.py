"""Real service processes for tests (see promptclimb_common.processes)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from promptclimb_common.processes import REPO, free_port, start_module, stop_process, wait_healthy

__all__ = ["REPO", "free_port", "start_process", "start_scorer", "stop_process", "wait_healthy"]


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
