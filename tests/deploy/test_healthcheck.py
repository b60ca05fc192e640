"""deploy/docker/healthcheck.py: the images' HEALTHCHECK and the TLS variant's Kubernetes exec probes."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy import REPO
from tests.tls_certs import make_certs

SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"


def probe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env)


def serve(credentials: grpc.ServerCredentials | None = None):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = "127.0.0.1:0"  # the kernel's pick, returned by the bind
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    server.start()
    return server, servicer, port


def test_serving_not_serving_and_absent():
    server, servicer, port = serve()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        ok = probe("--port", str(port))
        assert ok.returncode == 0, ok.stderr
        assert "SERVING" in ok.stdout

        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # draining after SIGTERM
        draining = probe("--port", str(port))
        assert draining.returncode == 1 and "NOT_SERVING" in draining.stderr

        servicer.set("promptclimb.scorer.v1.Scorer", health_pb2.HealthCheckResponse.SERVING)
        assert probe("--port", str(port), "--service", "promptclimb.scorer.v1.Scorer").returncode == 0
        unknown = probe("--port", str(port), "--service", "no.such.Service")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    finally:
        server.stop(None)
    gone = probe("--port", str(port), "--timeout", "1")
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_from_flags_and_environment(tmp_path, mutual):
    certs = make_certs(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca.read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    server, servicer, port = serve(credentials)
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        client = ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)] if mutual else []
        # Plaintext against a TLS port fails, as kubelet's native gRPC probe would.
        assert probe("--port", str(port), "--timeout", "2").returncode == 1
        ok = probe("--port", str(port), "--tls-ca", str(certs.ca), "--server-name", "localhost", *client)
        assert ok.returncode == 0, ok.stderr
        # The exec probes of deploy/k8s/components/scorer-tls pass everything by environment.
        env = {
            "HEALTHCHECK_PORT": str(port),
            "HEALTHCHECK_TLS_CA": str(certs.ca),
            "HEALTHCHECK_SERVER_NAME": "localhost",
        }
        if mutual:
            env |= {"HEALTHCHECK_TLS_CERT": str(certs.client_cert), "HEALTHCHECK_TLS_KEY": str(certs.client_key)}
        by_env = probe(env={"PATH": "/usr/bin:/bin", **env})
        assert by_env.returncode == 0, by_env.stderr
        wrong_name = probe(
            "--port",
            str(port),
            "--tls-ca",
            str(certs.ca),
            "--server-name",
            "elsewhere.example",
            "--timeout",
            "2",
            *client,
        )
        assert wrong_name.returncode == 1
    finally:
        server.stop(None)
