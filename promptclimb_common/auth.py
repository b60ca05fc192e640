"""Bearer tokens, rights and per-token request rates, for both services.

Tokens come from a JSON file or an environment variable holding the same JSON:

    {"tokens": [{"name": "team-a", "token": "s3cret", "rights": ["score"],
                 "requests_per_second": 20, "burst": 40, "evaluation_budget": 100000}]}

`evaluation_budget` (0 or absent: unlimited) caps the templates a token may
ever have scored; the scorer keeps the count across restarts.

Rights the scorer knows: `score` (the few-shot train split) and `test` (the
protected test split). The optimizer knows `run`. Tokens are compared in
constant time against every entry and are never logged; only names are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

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


class Authenticator:
    """Maps a call's `authorization` metadata to a Principal, or aborts it.

    With no tokens configured, auth is off and every caller is anonymous with
    `anonymous_rights`.
    """

    def __init__(self, tokens: list[TokenEntry], anonymous_rights: frozenset[str]) -> None:
        self._tokens = tokens
        self._anonymous = Principal("anonymous", anonymous_rights)
        self._buckets = {t.name: _TokenBucket(t.requests_per_second, t.burst) for t in tokens if t.requests_per_second > 0}

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Principal | None:
        """The principal for this metadata; None when auth is on and it fails."""
        if not self.enabled:
            return self._anonymous
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        digest = hashlib.sha256(header[len("Bearer ") :].strip().encode()).digest()
        match = None
        for entry in self._tokens:  # no early exit: time does not tell which entry matched
            if hmac.compare_digest(digest, entry.digest):
                match = entry
        return Principal(match.name, match.rights, match.evaluation_budget) if match else None

    async def require(self, context: grpc.aio.ServicerContext, right: str) -> Principal:
        """Authenticates, rate-limits and checks `right`; aborts the call otherwise."""
        principal = self.identify(context.invocation_metadata())
        if principal is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown token: send metadata 'authorization: Bearer <token>'",
            )
        structlog.contextvars.bind_contextvars(principal=principal.name)
        bucket = self._buckets.get(principal.name)
        wait = bucket.take() if bucket else 0.0
        if wait > 0:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of token '{principal.name}' reached; retry in {wait:.2f} s",
                trailing_metadata=(("retry-after-s", f"{wait:.3f}"),),
            )
        if not principal.has(right):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller '{principal.name}' lacks the '{right}' right for this call",
            )
        return principal
