"""The life of a grpc.aio server, shared by both services, and the channel their clients open.

Health, reflection and (unless off) Prometheus' /metrics are always served;
TLS (and mTLS when a client CA is given) is optional; SIGTERM drains in-flight
calls before exit. Port 0 lets the kernel pick; the ports bound are logged and,
with a port file, written there (promptclimb_common.port_file). Every call gets
a request id in the log context and is counted with the go-grpc-prometheus
metric names, so one dashboard reads both services. The channels clients open
are promptclimb_common.channels'.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from promptclimb_common.call_shares import HEALTH_ROOM, REVOKED, CallShares, Metadata, OpenCall, ShareLimits
from promptclimb_common.errors import ServiceError, abort
from promptclimb_common.port_file import BoundPorts

log = structlog.get_logger(__name__)

GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, by method.",
    ["grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


@dataclass(frozen=True)
class TlsFiles:
    """Server TLS material; `client_ca` turns on mTLS (client certs required)."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


class ReloadingCredentials:
    """Server TLS whose certificate, key and client CA are read again when their files change, or on SIGHUP
    (`reload`), so a rotated certificate needs no restart.

    gRPC asks `_fetch` at each new connection's handshake: a file changed since the last read (its modification
    time or size) gives the new configuration; files that cannot be read (a rotation half done) keep the current one,
    logged. Connections open before a rotation keep the certificate they began with.
    """

    def __init__(self, tls: TlsFiles) -> None:
        if not tls.cert or not tls.key:
            raise ValueError("TLS needs both a certificate and a key file")
        self.tls = tls
        self._paths = [Path(p) for p in (tls.cert, tls.key, tls.client_ca) if p]
        self._stamp = self._stamps()
        self._forced = False
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # gRPC takes None as "unchanged"; typeshed's stub does not say so
            require_client_authentication=tls.client_ca is not None,
        )

    def reload(self) -> None:
        """Reads the files again at the next handshake, changed or not (SIGHUP)."""
        self._forced = True

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self._paths))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        assert self.tls.cert and self.tls.key  # checked in __init__
        pair = [(Path(self.tls.key).read_bytes(), Path(self.tls.cert).read_bytes())]
        ca = Path(self.tls.client_ca).read_bytes() if self.tls.client_ca else None
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stamps()
            if stamp == self._stamp and not self._forced:
                return None
            configuration = self._configuration()
        except (OSError, ValueError) as err:
            log.error("tls_not_reloaded", reason=str(err))
            return None
        self._stamp, self._forced = stamp, False
        log.info("tls_reloaded", cert=self.tls.cert, mtls=bool(self.tls.client_ca))
        return configuration


class CallerLabels:
    """Whether /metrics may name callers: token names and run ids as label values (--metrics-caller-labels).

    Off, every caller's figures go under one label value, so a scrape tells no token name nor run id."""

    HIDDEN = "-"

    def __init__(self) -> None:
        self.shown = True

    def __call__(self, name: str) -> str:
        return name if self.shown else self.HIDDEN


caller_label = CallerLabels()


DEFAULT_MAX_CONCURRENT_RPCS = 256

_OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.")


Context = grpc.aio.ServicerContext[Any, Any]
# typeshed types a handler's behaviours as the sync server's; an aio server's are coroutine functions (unary) and
# async generators (streams) that take an aio context.
AioUnary = Callable[[Any, Context], Awaitable[Any]]
AioStream = Callable[[Any, Context], AsyncIterator[Any]]


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Binds a request id per call, counts calls by code, and turns a crash into INTERNAL.

    It also decodes the request itself: a message that is not valid protobuf
    (say, a string field holding bytes that are not UTF-8) gets INVALID_ARGUMENT
    naming the problem, where gRPC's own decoding would answer INTERNAL. Every
    service call is first admitted by `shares` (call_shares.py): health and
    reflection never are, so they always answer.
    """

    def __init__(self, shares: CallShares) -> None:
        self.shares = shares

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None or details.method.lstrip("/").startswith(_OPEN_SERVICES):
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        metadata = dict(details.invocation_metadata or ())
        request_id = str(metadata.get("x-request-id") or uuid.uuid4().hex[:16])

        decode = handler.request_deserializer
        caller = tuple(details.invocation_metadata or ())
        is_stream = handler.unary_stream is not None

        async def observe(call: Callable[[Any], Awaitable[Any]], raw: bytes, context: Context) -> Any:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            admitted: OpenCall | None = None
            try:
                try:
                    admitted = self.shares.admit(caller, is_stream)
                except ServiceError as refusal:
                    await abort(context, refusal)
                try:
                    request = decode(raw) if decode else raw
                except Exception as err:  # noqa: BLE001 - any decoding failure is the caller's malformed message
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {method} message: {err}"
                    )
                return await call(request)
            except asyncio.CancelledError:
                if admitted is None or not admitted.revoked:
                    code = grpc.StatusCode.CANCELLED
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # cancelled by revoke(), to be answered, not by the client leaving
                await abort(context, REVOKED)
            except Exception as err:  # the boundary of one call: logged, answered INTERNAL
                if context.code() not in (None, grpc.StatusCode.OK):  # an abort
                    code = context.code()
                    raise
                code = grpc.StatusCode.INTERNAL
                log.exception("rpc_failed", error=repr(err))
                await context.abort(code, f"internal error (request id {request_id}); the server logged it")
            finally:
                if admitted is not None:
                    self.shares.release(admitted)
                if context.code() not in (None, grpc.StatusCode.OK):
                    code = context.code()
                GRPC_HANDLED.labels(service, method, code.name).inc()
                GRPC_SECONDS.labels(service, method).observe(time.perf_counter() - started)

        if handler.unary_unary:
            inner = cast(AioUnary, handler.unary_unary)

            async def unary(raw: bytes, context: Context) -> Any:
                return await observe(lambda request: inner(request, context), raw, context)

            return grpc.unary_unary_rpc_method_handler(unary, response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = cast(AioStream, handler.unary_stream)

            async def stream(raw: bytes, context: Context) -> None:
                async def drain(request: Any) -> None:
                    async for item in inner_stream(request, context):
                        await context.write(item)

                await observe(drain, raw, context)

            return grpc.unary_stream_rpc_method_handler(stream, response_serializer=handler.response_serializer)
        return handler


# Takes the servicer its stub module generated for (any of them), so: Any, not object (parameters are contravariant).
Registrar = Callable[[Any, grpc.aio.Server], None]


class GrpcService:
    """One aio server with health, reflection, a /metrics endpoint and graceful shutdown.

    `services` are (add_XServicer_to_server, servicer, full service name).
    `metrics_port` None serves no /metrics; `port_file` gets the bound ports once serving.
    `shares` bound the calls in progress (call_shares.py): `max_concurrent_rpcs` in all, and per caller as
    `owner_of` (the caller's name from its metadata) tells them apart; without `owner_of`, only the total.
    """

    def __init__(
        self,
        services: Iterable[tuple[Registrar, object, str]],
        *,
        host: str,
        port: int,
        tls: TlsFiles = TlsFiles(),
        max_message_bytes: int = 4 * 1024 * 1024,
        max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
        shares: ShareLimits | None = None,
        owner_of: Callable[[Metadata], str | None] | None = None,
        grace_seconds: float = 30.0,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
        metrics_caller_labels: bool = True,
        port_file: Path | None = None,
    ) -> None:
        self._services = list(services)
        self.host, self.port, self.tls = host, port, tls
        self.metrics_port, self.port_file = metrics_port, port_file
        self.metrics_host = metrics_host or host
        caller_label.shown = metrics_caller_labels
        self._credentials = ReloadingCredentials(tls) if tls.enabled else None
        self._metrics_server: WSGIServer | None = None
        self.grace_seconds = grace_seconds
        limits = shares if shares is not None and owner_of is not None else ShareLimits(max_concurrent_rpcs)
        self.shares = CallShares(replace(limits, total=max_concurrent_rpcs), owner_of or (lambda _: None))
        self.server = grpc.aio.server(
            interceptors=[ObservingInterceptor(self.shares)],
            # gRPC's own cap, beyond which it answers RESOURCE_EXHAUSTED to anything, health included: room above ours
            maximum_concurrent_rpcs=max_concurrent_rpcs + HEALTH_ROOM,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
                # long optimizer runs keep idle channels alive with pings every 30 s
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        self.health = health_aio.HealthServicer()

    async def start(self) -> int:
        """Binds and starts; returns the bound port (useful when port is 0)."""
        names = [name for _, _, name in self._services]
        for register, servicer, _ in self._services:
            register(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([*names, "grpc.health.v1.Health", reflection.SERVICE_NAME], self.server)
        address = f"{self.host}:{self.port}"
        bound = (
            self.server.add_secure_port(address, self._credentials.credentials)
            if self._credentials
            else self.server.add_insecure_port(address)
        )
        if bound == 0:
            raise OSError(f"cannot bind gRPC port {address}")
        self.port = bound
        if self.metrics_port is not None:  # before serving: a metrics port that cannot be bound fails the start
            self._metrics_server, _ = start_http_server(self.metrics_port, addr=self.metrics_host)
            self.metrics_port = self._metrics_server.server_port
        await self.server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "grpc_server_started",
            address=f"{self.host}:{bound}",
            port=bound,
            metrics_port=self.metrics_port,
            metrics_host=self.metrics_host if self.metrics_port is not None else None,
            tls=self.tls.enabled,
            mtls=bool(self.tls.client_ca),
        )
        if self.port_file is not None:
            BoundPorts(bound, self.metrics_port).write(self.port_file)
        return bound

    async def stop(self) -> None:
        """Reports NOT_SERVING, then lets in-flight calls finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_seconds)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)  # waits out its poll interval: off the loop
            self._metrics_server.server_close()
        log.info("grpc_server_stopped")

    def reload(self, reload_tokens: Callable[[], None] | None = None) -> None:
        """SIGHUP: reads the TLS files again at the next handshake, calls `reload_tokens`, then ends the open calls
        whose token it revoked."""
        if self._credentials is not None:
            self._credentials.reload()
        if reload_tokens is not None:
            reload_tokens()
            self.shares.revoke()

    async def serve_until_signalled(self, reload_tokens: Callable[[], None] | None = None) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully; SIGHUP reloads (`reload`)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload, reload_tokens)
        await stop.wait()
        log.info("shutdown_requested", grace_seconds=self.grace_seconds)
        await self.stop()
