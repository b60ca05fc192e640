"""The flags every service has: address, metrics port, tokens, TLS, shutdown.

Each flag's default comes from the environment (PREFIX_FLAG), so a container
sets env and a shell passes flags; both services read them here, the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from promptclimb_common.grpc_runtime import DEFAULT_MAX_CONCURRENT_RPCS, TlsFiles

EnvReader = Callable[[str, object], object]


@dataclass(frozen=True)
class ServingConfig:
    """What every service's config holds; each service sets its own port and rights defaults."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (the kernel's pick; see port_file)
    metrics_port: int | None = None  # None: no /metrics; 0: any free port
    port_file: Path | None = None
    tokens_file: str | None = None
    anonymous_rights: frozenset[str] = frozenset()
    tls: TlsFiles = field(default_factory=TlsFiles)
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    grace_seconds: float = 30.0


def env_reader(prefix: str) -> EnvReader:
    """`read("metrics_port", 9101)` gives $PREFIX_METRICS_PORT, else 9101."""
    return lambda name, default: os.environ.get(f"{prefix}_{name.upper()}", default)


def metrics_port_arg(text: str) -> int | None:
    """`off` or a port number (0: any free port)."""
    if text.strip().lower() == "off":
        return None
    return int(text)


def add_serving_args(p: argparse.ArgumentParser, env: EnvReader, *, port: int, metrics_port: int | None,
                     anonymous_rights: frozenset[str], host: str = "127.0.0.1", grace_seconds: float = 30.0) -> None:
    a = p.add_argument
    a("--host", default=env("host", host), help="address to listen on (0.0.0.0 in a container)")
    a("--port", type=int, default=int(env("port", port)), help="gRPC port; 0: any free port (see --port-file)")
    a("--metrics-port", type=metrics_port_arg, default=env("metrics_port", metrics_port),
      help="Prometheus /metrics port; 0: any free port; off: none")
    a("--port-file", type=Path, default=env("port_file", None),
      help='once serving, write the bound ports here as JSON {"grpc": N, "metrics": M or null} (atomically)')
    a("--tokens-file", default=env("tokens_file", None),
      help="JSON file of bearer tokens for this API; else $PROMPTCLIMB_TOKENS; none: auth off")
    a("--anonymous-rights", default=env("anonymous_rights", ",".join(sorted(anonymous_rights))),
      help="rights of callers when auth is off (comma-separated)")
    a("--tls-cert", default=env("tls_cert", None), help="server certificate (PEM); enables TLS")
    a("--tls-key", default=env("tls_key", None), help="server private key (PEM)")
    a("--tls-client-ca", default=env("tls_client_ca", None), help="CA of client certificates; enables mTLS")
    a("--max-concurrent-rpcs", type=int, default=int(env("max_concurrent_rpcs", DEFAULT_MAX_CONCURRENT_RPCS)),
      help="calls in progress at once (watch streams included); beyond: RESOURCE_EXHAUSTED")
    a("--grace-seconds", type=float, default=float(env("grace_seconds", grace_seconds)),
      help="how long SIGTERM waits for in-flight calls")


def serving_settings(p: argparse.ArgumentParser, ns: argparse.Namespace) -> dict:
    """The shared flags, checked, as keyword arguments of a service's config."""
    if bool(ns.tls_cert) != bool(ns.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if ns.tls_client_ca and not ns.tls_cert:
        p.error("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
    if ns.grace_seconds < 0:
        p.error("--grace-seconds must not be negative")
    if ns.max_concurrent_rpcs < 1:
        p.error("--max-concurrent-rpcs must be at least 1")
    return dict(
        host=ns.host, port=ns.port, metrics_port=ns.metrics_port, port_file=ns.port_file, tokens_file=ns.tokens_file,
        anonymous_rights=frozenset(r.strip() for r in ns.anonymous_rights.split(",") if r.strip()),
        tls=TlsFiles(ns.tls_cert, ns.tls_key, ns.tls_client_ca), grace_seconds=ns.grace_seconds,
        max_concurrent_rpcs=ns.max_concurrent_rpcs,
    )
