"""Each caller's share of a server's calls in progress, so one caller cannot take every slot from the others.

gRPC's own `maximum_concurrent_rpcs` counts every call alike, health checks
included: one caller holding streams open could refuse everybody else and fail
the liveness probe. So the servers leave gRPC a cap with room above ours
(`HEALTH_ROOM`), and the interceptor admits each service call here first:

- at most `total` service calls at once (`--max-concurrent-rpcs`);
- at most `per_owner` of them for one caller (`--max-rpcs-per-owner`), of which
  at most `streams_per_owner` streams (`--max-streams-per-owner`).

Health and reflection are never counted, so they always answer. A caller is
the token's name (`owner_of`); a call without a known token is refused by the
handler at once, and meanwhile counts in one share for all such calls. A
refusal is RESOURCE_EXHAUSTED with reason OWNER_SHARE_REACHED and RetryInfo,
and tells the caller only its own figures.

`revoke` ends at once the open calls whose token no longer identifies them
(UNAUTHENTICATED): after a SIGHUP that rotates a token out, its streams do not
outlive it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import structlog

from promptclimb_common.errors import Reason, ServiceError

log = structlog.get_logger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
UNIDENTIFIED = ""  # the share of calls that carry no known token (each one is refused by its handler)
HEALTH_ROOM = 64  # calls gRPC admits beyond `total`: health checks, and refusals on their way out
RETRY_S = 1.0


@dataclass(frozen=True)
class ShareLimits:
    """0 for `per_owner` or `streams_per_owner`: no bound of that kind (only `total`)."""

    total: int
    per_owner: int = 0
    streams_per_owner: int = 0


@dataclass(eq=False)
class OpenCall:
    """One admitted call: whose it is, what it sent (to recheck its token), and the task that serves it."""

    owner: str
    stream: bool
    metadata: Metadata
    task: asyncio.Task | None = field(default=None, repr=False)
    revoked: bool = False


class CallShares:
    def __init__(self, limits: ShareLimits, owner_of: Callable[[Metadata], str | None]) -> None:
        self.limits, self._owner_of = limits, owner_of
        self._open: set[OpenCall] = set()
        self._calls: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()

    def admit(self, metadata: Metadata, stream: bool) -> OpenCall:
        """Counts the call in; ServiceError (OWNER_SHARE_REACHED) when the server or the caller's share is full."""
        owner = self._owner_of(metadata) or UNIDENTIFIED
        limits = self.limits
        if len(self._open) >= limits.total:
            raise _refusal(
                f"the server has {limits.total} calls in progress, its most (--max-concurrent-rpcs)", "total"
            )
        if limits.per_owner and self._calls[owner] >= limits.per_owner:
            raise _refusal(
                f"you have {limits.per_owner} calls in progress, your share (--max-rpcs-per-owner); "
                "end one (a WatchRun stream counts while open)",
                "owner",
            )
        if stream and limits.streams_per_owner and self._streams[owner] >= limits.streams_per_owner:
            raise _refusal(
                f"you have {limits.streams_per_owner} streams open, your share (--max-streams-per-owner); "
                "close one before opening another",
                "owner_streams",
            )
        call = OpenCall(owner, stream, metadata, asyncio.current_task())
        self._open.add(call)
        self._calls[owner] += 1
        self._streams[owner] += int(stream)
        return call

    def release(self, call: OpenCall) -> None:
        if call in self._open:
            self._open.discard(call)
            self._calls[call.owner] -= 1
            self._streams[call.owner] -= int(call.stream)

    def revoke(self) -> int:
        """Ends every open call whose token no longer identifies its caller (it sees UNAUTHENTICATED); the count."""
        gone = [call for call in self._open if call.owner != UNIDENTIFIED and self._owner_of(call.metadata) is None]
        for call in gone:
            call.revoked = True
            if call.task is not None:
                call.task.cancel()
        if gone:
            log.info("revoked_calls_ended", calls=len(gone), owners=sorted({c.owner for c in gone}))
        return len(gone)

    def in_progress(self, owner: str) -> int:
        return self._calls[owner]


def _refusal(message: str, scope: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.OWNER_SHARE_REACHED,
        f"{message}; retry in {RETRY_S:g} s",
        retry_after_s=RETRY_S,
        metadata={"scope": scope},
    )


REVOKED = ServiceError(
    grpc.StatusCode.UNAUTHENTICATED,
    Reason.TOKEN_MISSING,
    "the token of this call was revoked while it was open; call again with a current token",
)
