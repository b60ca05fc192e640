"""Bearer tokens, rights and per-token request rates, for both services.

Tokens come from a JSON file or an environment variable holding the same JSON:

    {"tokens": [{"name": "team-a", "token": "s3cret", "rights": ["score"],
                 "requests_per_second": 20, "burst": 40, "evaluation_budget": 100000}]}

`evaluation_budget` (0 or absent: unlimited) caps the templates a token may
ever have scored; the scorer keeps the count across restarts.

Rights the scorer knows: `score` (the few-shot train split) and `test` (the
protected test split). The optimizer knows `run`, `test` (its runs measure and
report test accuracy) and `admin` (sees every run, not only its own). Tokens
are compared in constant time against every entry and are never logged; only
names are. Names and tokens must be unique in a file (a repeat is refused), and
the file is read again on SIGHUP, so tokens rotate without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from promptclimb_common.errors import Reason, ServiceError, abort

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and rights, or the anonymous caller."""

    name: str
    rights: frozenset[str]
    evaluation_budget: int = 0  # 0: unlimited

    def has(self, right: str) -> bool:
        return right in self.rights


@dataclass
class TokenEntry:
    name: str
    digest: bytes = field(repr=False)
    rights: frozenset[str]
    requests_per_second: float = 0.0  # 0: unlimited
    burst: float = 0.0
    evaluation_budget: int = 0  # 0: unlimited


class AuthConfigError(ValueError):
    """The token file or variable is unreadable or malformed."""


def parse_tokens(text: str, origin: str) -> list[TokenEntry]:
    """Parses the token JSON; errors name `origin` and the bad entry."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise AuthConfigError(f"{origin}: not valid JSON ({err})") from None
    items = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(items, list):
        raise AuthConfigError(f'{origin}: expected {{"tokens": [...]}}')
    entries: list[TokenEntry] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") in {e.name for e in entries}:
            raise AuthConfigError(f"{origin}: token #{index} repeats the name '{item['name']}'; names must be unique")
        if not isinstance(item, dict) or not item.get("name") or not item.get("token"):
            raise AuthConfigError(f"{origin}: token #{index} needs a non-empty 'name' and 'token'")
        rights = item.get("rights", [])
        if not isinstance(rights, list) or not all(isinstance(r, str) for r in rights):
            raise AuthConfigError(f"{origin}: token '{item['name']}' has 'rights' that is not a list of strings")
        rate = float(item.get("requests_per_second", 0) or 0)
        entries.append(
            TokenEntry(
                name=str(item["name"]),
                digest=hashlib.sha256(str(item["token"]).encode()).digest(),
                rights=frozenset(rights),
                requests_per_second=rate,
                burst=float(item.get("burst", 0) or max(rate, 1.0)),
                evaluation_budget=int(item.get("evaluation_budget", 0) or 0),
            )
        )
        if any(e.digest == entries[-1].digest for e in entries[:-1]):
            raise AuthConfigError(
                f"{origin}: token '{entries[-1].name}' has the same token as another entry; each token must be unique"
            )
    return entries


def load_tokens(file: str | None, env_var: str) -> list[TokenEntry]:
    """Tokens from `file` if given, else from the variable `env_var`, else none."""
    if file:
        try:
            return parse_tokens(Path(file).read_text(), file)
        except OSError as err:
            raise AuthConfigError(f"cannot read token file {file}: {err.strerror}") from None
    if os.environ.get(env_var):
        return parse_tokens(os.environ[env_var], f"${env_var}")
    return []


def reload_tokens(auth: Authenticator, file: str | None, env_var: str) -> None:
    """SIGHUP: reads the tokens again.

    A broken or emptied file keeps the current tokens (logged) and never stops the service."""
    try:
        tokens = load_tokens(file, env_var)
    except AuthConfigError as err:
        log.error("tokens_not_reloaded", reason=str(err))
        return
    if auth.enabled and not tokens:
        log.error("tokens_not_reloaded", reason="the new token list is empty, which would turn auth off")
        return
    auth.reload(tokens)


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> float:
        """Takes one request; returns 0 if admitted, else seconds to wait."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class LocalRateLimiter:
    """Token buckets by token name, in this process (one replica's rates)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _TokenBucket] = {}

    def take(self, name: str, rate: float, burst: float) -> float:
        """0 if the request is admitted, else the seconds until one is; a changed rate starts a new bucket."""
        if rate <= 0:
            return 0.0
        bucket = self._buckets.get(name)
        if bucket is None or (bucket.rate, bucket.capacity) != (rate, burst):
            bucket = self._buckets[name] = _TokenBucket(rate, burst)
        return bucket.take()

    async def take_request(self, name: str, rate: float, burst: float) -> float:
        return self.take(name, rate, burst)


RateLimit = Callable[[str, float, float], Awaitable[float]]


class Authenticator:
    """Maps a call's `authorization` metadata to a Principal, or aborts it.

    With no tokens configured, auth is off and every caller is anonymous with
    `anonymous_rights`. `rate_limit(name, rate, burst)` gives the wait before the
    token's next request (the scorer passes its quota store, shared by replicas).
    """

    def __init__(
        self, tokens: list[TokenEntry], anonymous_rights: frozenset[str], rate_limit: RateLimit | None = None
    ) -> None:
        self._tokens = tokens
        self._anonymous = Principal("anonymous", anonymous_rights)
        self._rate_limit = rate_limit or LocalRateLimiter().take_request

    def reload(self, tokens: list[TokenEntry]) -> None:
        """Replaces the tokens (SIGHUP); calls in flight keep the principal they were given."""
        self._tokens = tokens
        log.info("tokens_reloaded", tokens=len(tokens), names=sorted(t.name for t in tokens))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Principal | None:
        """The principal for this metadata; None when auth is on and it fails."""
        if not self.enabled:
            return self._anonymous
        entry = self._entry(metadata)
        return Principal(entry.name, entry.rights, entry.evaluation_budget) if entry else None

    def owner_of(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
        """The caller's name for its share of the server's calls (call_shares.py); None without a known token."""
        principal = self.identify(metadata)
        return principal.name if principal else None

    def _entry(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> TokenEntry | None:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        digest = hashlib.sha256(header[len("Bearer ") :].strip().encode()).digest()
        match = None
        for entry in self._tokens:  # no early exit: time does not tell which entry matched
            if hmac.compare_digest(digest, entry.digest):
                match = entry
        return match

    async def require(
        self, context: grpc.aio.ServicerContext, right: str, forbidden: Reason = Reason.RIGHT_MISSING
    ) -> Principal:
        """Authenticates, rate-limits and checks `right`.

        Aborts the call otherwise (PERMISSION_DENIED with `forbidden`)."""
        entry = self._entry(context.invocation_metadata()) if self.enabled else None
        principal = (
            self._anonymous
            if not self.enabled
            else (Principal(entry.name, entry.rights, entry.evaluation_budget) if entry else None)
        )
        if principal is None:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    Reason.TOKEN_MISSING,
                    "missing or unknown token: send metadata 'authorization: Bearer <token>'",
                ),
            )
        structlog.contextvars.bind_contextvars(principal=principal.name)
        wait = await self._rate_limit(entry.name, entry.requests_per_second, entry.burst) if entry else 0.0
        if wait > 0:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    Reason.RATE_LIMITED,
                    f"rate limit of token '{principal.name}' reached; retry in {wait:.2f} s",
                    retry_after_s=wait,
                ),
            )
        if not principal.has(right):
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    forbidden,
                    f"caller '{principal.name}' lacks the '{right}' right for this call",
                ),
            )
        return principal
