"""A broadcast wake-up: how a run's progress reaches the watchers waiting on it."""

from __future__ import annotations

import asyncio


class Signal:
    """Wakes every waiter once per fire; a waiter takes `current` before reading, so no fire is missed."""

    def __init__(self) -> None:
        self.current = asyncio.Event()

    def fire(self) -> None:
        self.current.set()
        self.current = asyncio.Event()
