"""Both services bind port 0 and say which ports they got, in the log and in the port file; explicit ports work."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptclimb_common.port_file import BoundPorts
from tests.procs import REPO, held_port, log_events, start_process, start_service, stop_process, wait_for_ports

# The optimizer calls neither its scorer nor its LLM until a run starts.
UNUSED = "127.0.0.1:9"


@pytest.fixture
def service_args(request, tiny_clip_dir, image_task_dir, tmp_path) -> list[str]:
    if request.param == "scorer":
        return [
            "scorer_service",
            "--model",
            str(tiny_clip_dir),
            "--task",
            f"shapes={image_task_dir}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--state-dir",
            str(tmp_path / "scorer-state"),
        ]
    return [
        "optimizer_service",
        "serve",
        "--state-dir",
        str(tmp_path / "state"),
        "--scorer",
        UNUSED,
        "--llm-base-url",
        f"http://{UNUSED}/v1",
        "--llm-model",
        "none",
    ]


ENV = {"OPENAI_API_KEY": "placeholder-for-an-unused-llm"}
both_services = pytest.mark.parametrize("service_args", ["scorer", "optimizer"], indirect=True)


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply: health_pb2.HealthCheckResponse = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def metrics_page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        page: str = reply.read().decode()
    return page


@both_services
def test_port_0_binds_ports_of_the_kernels_choice_and_reports_them(service_args, tmp_path):
    log_path = tmp_path / "service.log"
    service = start_service(service_args, log_path, ENV, metrics=True)
    try:
        ports = service.ports
        assert ports.metrics is not None and 0 not in (ports.grpc, ports.metrics) and ports.grpc != ports.metrics
        assert serving(ports.grpc)
        assert "# TYPE grpc_server_handled_total counter" in metrics_page(ports.metrics)
        [started] = [e for e in log_events(log_path) if e["event"] == "grpc_server_started"]
        assert (started["port"], started["metrics_port"]) == (ports.grpc, ports.metrics)
    finally:
        assert stop_process(service.process) == 0
    assert not list(tmp_path.glob(".service.ports.json.*")), (
        "the port file is written aside, then renamed: no leftovers"
    )


@both_services
def test_explicit_ports_by_flag_and_by_environment(service_args, tmp_path):
    prefix = "SCORER" if service_args[0] == "scorer_service" else "OPTIMIZER"
    port_file = tmp_path / "ports.json"
    with held_port() as grpc_port, held_port() as metrics_port:
        env = {**ENV, f"{prefix}_PORT_FILE": str(port_file), f"{prefix}_METRICS_PORT": str(metrics_port)}
        process = start_process(
            [*service_args, "--host", "127.0.0.1", "--port", str(grpc_port)], tmp_path / "service.log", env
        )
        try:
            assert wait_for_ports(port_file, process) == BoundPorts(grpc_port, metrics_port)
            assert serving(grpc_port)
            assert "grpc_server_handled_total" in metrics_page(metrics_port)
        finally:
            assert stop_process(process) == 0


def test_metrics_off_is_null_in_the_port_file(tiny_clip_dir, image_task_dir, tmp_path):
    service = start_service(
        [
            "scorer_service",
            "--model",
            str(tiny_clip_dir),
            "--task",
            f"shapes={image_task_dir}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        tmp_path / "scorer.log",
    )
    try:
        assert service.ports.metrics is None and serving(service.ports.grpc)
    finally:
        stop_process(service.process)


def test_a_metrics_port_that_is_neither_a_number_nor_off_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "scorer_service", "--task", "t=/nowhere", "--metrics-port", "of"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "--metrics-port" in done.stderr and "'of'" in done.stderr
