"""The service's active-run slots (--max-active-runs), shared fairly between owners.

A plain semaphore grants slots first come, first served: an owner who queued
twenty runs would hold every slot until the last of them ends, while another
owner's one run waits behind them all. Here each owner with runs waiting gets
slots in turn: a freed slot goes to the waiting owner with the fewest runs
active, then to the one served longest ago (never is longest), then to the
earliest waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class FairSlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        self._active: Counter[str] = Counter()
        self._waiting: list[tuple[str, asyncio.Future[None]]] = []  # in arrival order
        self._granted = 0
        self._last_granted: dict[str, int] = {}  # owner -> the number of its last grant

    @contextlib.asynccontextmanager
    async def slot(self, owner: str) -> AsyncIterator[None]:
        """Holds one slot for `owner` while the block runs; waits for its turn first."""
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release(owner)

    def active(self, owner: str) -> int:
        return self._active[owner]

    async def _acquire(self, owner: str) -> None:
        if self._free and not self._waiting:
            self._take(owner)
            return
        entry = (owner, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif entry[1].done() and not entry[1].cancelled():  # granted, then cancelled before it ran: give it back
                self._release(owner)
            raise

    def _precedence(self, index: int) -> tuple[int, int, int]:
        owner = self._waiting[index][0]
        return self._active[owner], self._last_granted.get(owner, -1), index

    def _take(self, owner: str) -> None:
        self._free -= 1
        self._active[owner] += 1
        self._last_granted[owner] = self._granted
        self._granted += 1

    def _release(self, owner: str) -> None:
        self._free += 1
        self._active[owner] -= 1
        while self._free and self._waiting:
            turn = min(range(len(self._waiting)), key=self._precedence)
            waiter, granted = self._waiting.pop(turn)
            if not granted.cancelled():
                self._take(waiter)
                granted.set_result(None)
