"""Real service processes for tests (see promptclimb_common.processes), and waiting for what they do."""

from __future__ import annotations

import contextlib
import json
import operator
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families
from tenacity import AsyncRetrying, Retrying, retry_if_result, stop_after_delay, wait_fixed

from promptclimb_common.processes import (
    REPO,
    Service,
    as_child,
    held_port,
    start_module,
    start_service,
    stop_process,
    wait_for_ports,
    wait_healthy,
)

__all__ = [
    "REPO",
    "Service",
    "await_until",
    "held_port",
    "log_events",
    "optimizer_service",
    "scorer_service",
    "scraped",
    "start_process",
    "start_redis",
    "start_scorer",
    "start_service",
    "stop_process",
    "wait_for_ports",
    "wait_healthy",
    "wait_until",
]

T = TypeVar("T")
POLL_S = 0.05

start_process = start_module


def _polling(timeout: float, what: str) -> dict:
    def timed_out(_state) -> None:
        raise TimeoutError(f"{what} not within {timeout} s")

    return {
        "stop": stop_after_delay(timeout),
        "wait": wait_fixed(POLL_S),
        "retry": retry_if_result(operator.not_),
        "retry_error_callback": timed_out,
        "reraise": True,
    }


def wait_until(condition: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
    """Polls `condition` until it is truthy (returned) or `timeout` s pass (TimeoutError naming `what`)."""
    return Retrying(**_polling(timeout, what))(condition)


async def await_until(
    condition: Callable[[], T | Awaitable[T]], timeout: float = 30.0, what: str = "the condition"
) -> T:
    """`wait_until` for a test on the event loop: the loop runs between polls."""

    async def check() -> T:
        result = condition()
        return await result if isinstance(result, Awaitable) else result

    return await AsyncRetrying(**_polling(timeout, what))(check)


def log_events(log_path: Path) -> list[dict]:
    """The structlog JSON events in a service's log (other lines skipped)."""
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def scorer_service(
    model_dir: Path,
    tasks: dict[str, Path],
    cache_dir: Path,
    log_path: Path,
    *extra: str,
    env: dict | None = None,
    metrics: bool = False,
) -> Service:
    """Starts the real scorer on loopback ports of the kernel's choice (/metrics too with `metrics`); returns once it
    serves."""
    args = [
        "scorer_service",
        "--model",
        str(model_dir),
        "--cache-dir",
        str(cache_dir),
        "--state-dir",
        str(cache_dir.with_name(cache_dir.name + "-state")),
        *extra,
    ]
    for task_id, root in tasks.items():
        args += ["--task", f"{task_id}={root}"]
    return start_service(args, log_path, env, metrics=metrics)


def optimizer_service(
    state_dir: Path,
    scorer_address: str,
    llm_url: str,
    tokens_file: Path,
    log_path: Path,
    scorer_token: str,
    *extra: str,
    timeout: float = 60.0,
) -> Service:
    """Starts the real optimizer (`serve`) on loopback with auth on, calling that scorer and that LLM (model "m")."""
    args = ["optimizer_service", "serve", "--state-dir", str(state_dir), "--scorer", scorer_address]
    args += ["--llm-base-url", llm_url, "--llm-model", "m", "--tokens-file", str(tokens_file), *extra]
    return start_service(args, log_path, {"OPENAI_API_KEY": "x", "SCORER_TOKEN": scorer_token}, timeout=timeout)


def scraped(metrics_url: str, sample: str) -> float:
    """One unlabelled sample of a service's /metrics, read with prometheus_client's own parser."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and not found.labels:
                return found.value
    raise LookupError(f"no sample {sample} at {metrics_url}")


def start_scorer(
    model_dir: Path, tasks: dict[str, Path], cache_dir: Path, log_path: Path, *extra: str, env: dict | None = None
) -> tuple[subprocess.Popen, str]:
    """`scorer_service` without metrics, as (process, address)."""
    scorer = scorer_service(model_dir, tasks, cache_dir, log_path, *extra, env=env)
    return scorer.process, scorer.address


def start_redis(work_dir: Path, timeout: float = 20.0, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Starts Debian's redis-server (`make redis-server` installs it) on a held loopback port, or on `port` where
    a manifest fixes one (the image check), in memory only; returns (process, redis:// URL). (Its `--port 0`
    means no TCP at all, hence the held port.)"""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed; `make redis-server` installs Debian's")
    work_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(port) if port else held_port() as port:
        with (work_dir / "redis.log").open("ab") as log:
            process = subprocess.Popen(
                **as_child(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(work_dir),
                    ]
                ),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def pong() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}; see {work_dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        try:
            wait_until(pong, timeout, f"redis-server answering on port {port}")
        except BaseException:
            stop_process(process, signal.SIGKILL)
            raise
    return process, f"redis://127.0.0.1:{port}/0"
