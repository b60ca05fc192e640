"""The flags every service has: address, metrics port, tokens, TLS, shutdown.

Each flag's default comes from the environment (PREFIX_FLAG), so a container
sets env and a shell passes flags; both services read them here, the same way.
A variable's value is parsed by pydantic's rules for its flag's type, and a
malformed one is refused naming the variable (EnvError; each command line turns
it into its usage error). A yes/no, from the environment or the command line
(flag_type(bool)), takes only true/false, yes/no, on/off, t/f, y/n or 1/0.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from promptclimb_common.grpc_runtime import DEFAULT_MAX_CONCURRENT_RPCS, TlsFiles

EnvReader = Callable[..., Any]


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


class EnvError(ValueError):
    """An environment variable holds a value its flag cannot take; the message names both."""


def parse(kind: Any, text: str) -> Any:
    """`text` as a `kind`.

    A type (int, Path, an Enum, a Literal) is parsed by pydantic's string rules; a function parses it itself."""
    if inspect.isfunction(kind):
        return kind(text)
    try:
        return TypeAdapter(kind).validate_strings(text)
    except ValidationError as err:
        raise ValueError("; ".join(e["msg"] for e in err.errors())) from None


def flag_type(kind: type) -> Callable[[str], Any]:
    """An argparse `type=` that parses a command-line value as env_reader parses the variable."""

    def convert(text: str) -> Any:
        try:
            return parse(kind, text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None

    convert.__name__ = kind.__name__  # argparse names it in its own messages
    return convert


def env_reader(prefix: str) -> EnvReader:
    """`read("metrics_port", 9101, int)` gives $PREFIX_METRICS_PORT as an int, else 9101; EnvError if it is no int."""

    def read(name: str, default: Any, kind: Any = str) -> Any:
        variable = f"{prefix}_{name.upper()}"
        text = os.environ.get(variable)
        if text is None:
            return default
        try:
            return parse(kind, text)
        except (ValueError, argparse.ArgumentTypeError) as err:
            raise EnvError(f"${variable}={text!r}: {err}") from None

    return read


def metrics_port_arg(text: str) -> int | None:
    """`off` or a port number (0: any free port)."""
    if text.strip().lower() == "off":
        return None
    return int(text)


def add_serving_args(
    p: argparse.ArgumentParser,
    env: EnvReader,
    *,
    port: int,
    metrics_port: int | None,
    anonymous_rights: frozenset[str],
    host: str = "127.0.0.1",
    grace_seconds: float = 30.0,
) -> None:
    a = p.add_argument
    a("--host", default=env("host", host), help="address to listen on (0.0.0.0 in a container)")
    a("--port", type=int, default=env("port", port, int), help="gRPC port; 0: any free port (see --port-file)")
    a(
        "--metrics-port",
        type=metrics_port_arg,
        default=env("metrics_port", metrics_port, metrics_port_arg),
        help="Prometheus /metrics port; 0: any free port; off: none",
    )
    a(
        "--port-file",
        type=Path,
        default=env("port_file", None, Path),
        help='once serving, write the bound ports here as JSON {"grpc": N, "metrics": M or null} (atomically)',
    )
    a(
        "--tokens-file",
        default=env("tokens_file", None),
        help="JSON file of bearer tokens for this API; else $PROMPTCLIMB_TOKENS; none: auth off",
    )
    a(
        "--anonymous-rights",
        default=env("anonymous_rights", ",".join(sorted(anonymous_rights))),
        help="rights of callers when auth is off (comma-separated)",
    )
    a("--tls-cert", default=env("tls_cert", None), help="server certificate (PEM); enables TLS")
    a("--tls-key", default=env("tls_key", None), help="server private key (PEM)")
    a("--tls-client-ca", default=env("tls_client_ca", None), help="CA of client certificates; enables mTLS")
    a(
        "--max-concurrent-rpcs",
        type=int,
        default=env("max_concurrent_rpcs", DEFAULT_MAX_CONCURRENT_RPCS, int),
        help="calls in progress at once (watch streams included); beyond: RESOURCE_EXHAUSTED",
    )
    a(
        "--grace-seconds",
        type=float,
        default=env("grace_seconds", grace_seconds, float),
        help="how long SIGTERM waits for in-flight calls",
    )


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
    return {
        "host": ns.host,
        "port": ns.port,
        "metrics_port": ns.metrics_port,
        "port_file": ns.port_file,
        "tokens_file": ns.tokens_file,
        "anonymous_rights": frozenset(r.strip() for r in ns.anonymous_rights.split(",") if r.strip()),
        "tls": TlsFiles(ns.tls_cert, ns.tls_key, ns.tls_client_ca),
        "grace_seconds": ns.grace_seconds,
        "max_concurrent_rpcs": ns.max_concurrent_rpcs,
    }


class ShowsDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, unless its help already says it (a knob's "default 3", where 0 on the
    command line means "the preset's") or there is none to show (None, "": the help says what unset means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
