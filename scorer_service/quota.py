"""Per-token quotas: request rates and evaluation budgets, in one interface with two stores.

A black-box scorer can be mined by asking it enough questions; a budget bounds
how many templates one token can ever have scored, and a rate bounds how fast
it asks. Templates are charged before they are scored, atomically, so
concurrent calls cannot overspend; a call that is then refused or fails gets
its charge back (`refund`), so nothing is paid for what was not answered.

- `SqliteQuota` (the default, `--quota-store sqlite`): the budget ledger in a
  SQLite file under --state-dir, rates in the process. Right for one replica.
- `RedisQuota` (`--quota-store redis://HOST:PORT/DB`): ledger and rate buckets
  in Redis, each update one Lua script (atomic on the server), so every replica
  shares one budget and one rate per token. Use it whenever more than one
  scorer process serves the same tokens (the HPA, a rolling update).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio
import redis.commands.core
import redis.exceptions
import structlog

from promptclimb_common.auth import LocalRateLimiter

log = structlog.get_logger(__name__)

REDIS_PREFIX = "promptclimb:scorer:"
LEDGER_BUSY_TIMEOUT_S = 2.0  # how long a charge waits for another writer of the ledger before UNAVAILABLE
T = TypeVar("T")
# Query parameters of a Redis URL that carry a credential (redis-py reads `password` and `username`).
SECRET_PARAMETERS = frozenset({"password", "username", "user", "pass", "auth", "token"})


def redacted_url(url: str) -> str:
    """The URL with every credential it can carry replaced by `***`: `user:password@` and credential query parameters
    (`?password=`), so it may be logged and shown in messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode(
        [
            (k, "***" if k.lower() in SECRET_PARAMETERS else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


class BudgetExhaustedError(RuntimeError):
    """The token's evaluation budget cannot cover this request."""

    def __init__(self, token: str, used: int, budget: int, count: int) -> None:
        super().__init__(
            f"evaluation budget of token '{token}' is spent: {used} of {budget} templates used, "
            f"this request needs {count}"
        )
        self.token, self.used, self.budget, self.count = token, used, budget, count


class QuotaStoreError(RuntimeError):
    """The quota store cannot be reached or used; the message says which and why."""


class QuotaStore(Protocol):
    async def take_request(self, token: str, rate: float, burst: float) -> float:
        """Takes one request from the token's bucket; 0 if admitted, else the seconds until one is free."""

    async def charge(self, token: str, count: int, budget: int) -> int:
        """Adds `count` evaluations (budget 0: unlimited); the new total, or BudgetExhaustedError charging nothing."""

    async def refund(self, token: str, count: int) -> None:
        """Gives back evaluations charged for templates that were not scored."""

    async def used(self, token: str) -> int: ...

    async def close(self) -> None: ...


class SqliteQuota:
    """One replica's quotas: the ledger survives restarts in SQLite; rate buckets live in the process.

    Every ledger statement runs in a worker thread, never on the event loop: a ledger locked by another writer, or a
    full disk, delays only the charge that waits for it, and gives QuotaStoreError (UNAVAILABLE, retryable) instead of
    freezing every call and the health check."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=LEDGER_BUSY_TIMEOUT_S)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last charges
        self._db.execute("CREATE TABLE IF NOT EXISTS evaluations (token TEXT PRIMARY KEY, used INTEGER NOT NULL)")
        self._db.execute("BEGIN IMMEDIATE")  # proves the file is writable now, not at the first charge
        self._db.execute("COMMIT")
        self._lock = threading.Lock()
        self._rates = LocalRateLimiter()

    async def take_request(self, token: str, rate: float, burst: float) -> float:
        return self._rates.take(token, rate, burst)

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Runs `work` on the ledger in a thread, one at a time; a SQLite failure becomes QuotaStoreError."""

        def locked() -> T:
            with self._lock:
                return work()

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as err:
            raise QuotaStoreError(f"evaluation ledger failed: {err}") from None

    async def used(self, token: str) -> int:
        return await self._off_loop(lambda: self._used(token))

    def _used(self, token: str) -> int:
        row = self._db.execute("SELECT used FROM evaluations WHERE token = ?", (token,)).fetchone()
        return row[0] if row else 0

    async def charge(self, token: str, count: int, budget: int) -> int:
        def charge() -> int:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = self._used(token)
                if budget and used + count > budget:
                    raise BudgetExhaustedError(token, used, budget, count)
                self._add(token, count)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return used + count

        return await self._off_loop(charge)

    async def refund(self, token: str, count: int) -> None:
        if count:
            await self._off_loop(lambda: self._add(token, -count))

    def _add(self, token: str, count: int) -> None:
        self._db.execute(
            "INSERT INTO evaluations (token, used) VALUES (?, MAX(?, 0)) "
            "ON CONFLICT(token) DO UPDATE SET used = MAX(used + ?, 0)",
            (token, count, count),
        )

    async def close(self) -> None:
        await self._off_loop(self._db.close)


# Both scripts run atomically on the Redis server, so replicas racing on one token cannot overspend.
_CHARGE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local count, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
if budget > 0 and used + count > budget then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], count)}
"""
_REFUND = """
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then redis.call('SET', KEYS[1], 0) end
return left
"""
# A token bucket on the server's clock (TIME), so replicas with skewed clocks agree. Returns the wait in microseconds.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - stamp) * rate / 1000000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000000) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class RedisQuota:
    """Quotas every replica shares: the ledger and the rate buckets in Redis."""

    def __init__(self, client: redis.asyncio.Redis, url: str) -> None:
        self._client, self._url = client, url
        self._charge = client.register_script(_CHARGE)
        self._refund = client.register_script(_REFUND)
        self._take = client.register_script(_TAKE)

    @classmethod
    async def connect(cls, url: str) -> RedisQuota:
        """Connects and pings, so a wrong URL fails at start, not at the first call."""
        client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        quota = cls(client, url)
        try:
            await client.ping()
        except redis.exceptions.RedisError as err:
            await client.aclose()
            raise QuotaStoreError(f"--quota-store {quota.safe_url}: {err}") from None
        return quota

    @property
    def safe_url(self) -> str:
        """The URL without its credentials, for messages and logs."""
        return redacted_url(self._url)

    async def _run(self, script: redis.commands.core.AsyncScript, keys: list[str], args: list[float]) -> Any:
        """The script's reply, as the Lua script shapes it."""
        try:
            return await script(keys=keys, args=args)
        except redis.exceptions.RedisError as err:
            raise QuotaStoreError(f"quota store {self.safe_url} failed: {err}") from None

    async def take_request(self, token: str, rate: float, burst: float) -> float:
        """An unreachable store admits the request (logged): the budget, checked next, still fails closed."""
        if rate <= 0:
            return 0.0
        try:
            return int(await self._run(self._take, [f"{REDIS_PREFIX}rate:{token}"], [rate, burst])) / 1e6
        except QuotaStoreError as err:
            log.error("rate_limit_unchecked", token=token, reason=str(err))
            return 0.0

    async def charge(self, token: str, count: int, budget: int) -> int:
        admitted, used = await self._run(self._charge, [f"{REDIS_PREFIX}evaluations:{token}"], [count, budget])
        if not admitted:
            raise BudgetExhaustedError(token, int(used), budget, count)
        return int(used)

    async def refund(self, token: str, count: int) -> None:
        if count:
            await self._run(self._refund, [f"{REDIS_PREFIX}evaluations:{token}"], [count])

    async def used(self, token: str) -> int:
        try:
            value = await self._client.get(f"{REDIS_PREFIX}evaluations:{token}")
        except redis.exceptions.RedisError as err:
            raise QuotaStoreError(f"quota store {self.safe_url} failed: {err}") from None
        return int(value or 0)

    async def close(self) -> None:
        await self._client.aclose()
