"""Container health check through the gRPC health service (grpc.health.v1).

Exit 0 when the server answers SERVING for `--service` ("" = the whole
server), 1 otherwise. Used by the Docker HEALTHCHECK, compose, and the
Kubernetes exec probes of the TLS variant (kubelet's native gRPC probes speak
plaintext only).

    python /app/healthcheck.py --port 50051
    python /app/healthcheck.py --port 50051 --tls-ca /etc/promptclimb/tls/ca.crt \
        --server-name scorer.promptclimb.svc
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("HEALTHCHECK_PORT", "50051")))
    p.add_argument("--service", default="", help='service name to ask about; "" is the whole server')
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument(
        "--tls-ca",
        default=os.environ.get("HEALTHCHECK_TLS_CA"),
        help="CA (PEM) that signed the server cert; enables TLS",
    )
    p.add_argument("--tls-cert", default=os.environ.get("HEALTHCHECK_TLS_CERT"), help="client certificate for mTLS")
    p.add_argument("--tls-key", default=os.environ.get("HEALTHCHECK_TLS_KEY"), help="client key for mTLS")
    p.add_argument(
        "--server-name",
        default=os.environ.get("HEALTHCHECK_SERVER_NAME"),
        help="name to verify in the server certificate (it is not issued for 127.0.0.1)",
    )
    args = p.parse_args(argv)

    target = f"{args.host}:{args.port}"
    if args.tls_ca:
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as err:
        print(f"unhealthy: {target}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {target}: {status}", file=sys.stderr)
        return 1
    print(f"healthy: {target}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
