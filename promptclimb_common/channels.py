"""The channel a client of our services opens: keepalive, reconnects, load balancing, TLS, the bearer token.

The optimizer's scorer client and promptclimb.client connect through `open_channel`. Only grpcio is
imported here, so the client package installs without the services' dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


def channel_credentials(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust `ca` (system roots if None); cert+key for mTLS."""

    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS: the CA to trust (the system's roots when None); `cert` and `key` for mTLS."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate and its key go together (mTLS)")


CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Reconnect soon after a server comes back, not after gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Spread calls over every address a name resolves to (a headless Service's pods).
    ("grpc.lb_policy_name", "round_robin"),
)


def open_channel(address: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """A channel to one of our services: plaintext without `tls`, else TLS (mTLS with a client cert)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, channel_credentials(tls.ca, tls.cert, tls.key), options=CHANNEL_OPTIONS)


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
