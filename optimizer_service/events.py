"""A run's events as watchers see them.

Events are appended to the store in the transaction of the progress they
report (the store numbers them there), and watchers read them from there, so a
replay and a live stream are the same sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from optimizer_service.signals import Signal
from optimizer_service.store import Store
from promptclimb.optimizer.v1 import optimizer_pb2 as pb

WATCH_POLL_S = 5.0  # a watcher re-reads the store at least this often


def counters_proto(counters: dict) -> pb.Counters:
    """The stored counters (climb.Counters.to_json) as the proto reports them."""
    known = set(pb.Counters.DESCRIPTOR.fields_by_name)
    proto = pb.Counters(**{k: v for k, v in counters.items() if k in known})
    proto.active_time.FromNanoseconds(round(counters.get("active_seconds", 0.0) * 1e9))
    return proto


def without_test(event: pb.RunEvent) -> pb.RunEvent:
    """The event with every test accuracy cleared (only RunEnded carries them)."""
    if event.HasField("run_ended"):
        for scored in event.run_ended.best:
            scored.ClearField("test_accuracy")
        if event.run_ended.HasField("selected"):
            event.run_ended.selected.ClearField("test_accuracy")
        if event.run_ended.HasField("ensemble"):
            event.run_ended.ensemble.ClearField("test_accuracy")
    return event


async def watch(
    store: Store, run_id: str, signal: Signal, ended: Callable[[], bool], *, after_sequence: int, with_test: bool
) -> AsyncIterator[pb.RunEvent]:
    """The run's events after `after_sequence`, then live ones until `ended()`.

    A RunEnded that a resume superseded (events follow it) is not sent, so the
    only RunEnded a watcher sees is the run's last event.
    """
    last = after_sequence
    while True:
        woken = signal.current
        is_ended = ended()  # read before the events, so none is missed
        payloads = store.events_after(run_id, last)
        progressed = False
        for index, payload in enumerate(payloads):
            event = pb.RunEvent.FromString(payload)
            superseded = event.HasField("run_ended") and index < len(payloads) - 1
            if event.HasField("run_ended") and not superseded and not is_ended:
                break  # resumed since it ended: wait for what follows, which supersedes it
            last, progressed = event.sequence, True
            if not superseded:
                yield event if with_test else without_test(event)
        if progressed:
            continue
        if is_ended:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), WATCH_POLL_S)
