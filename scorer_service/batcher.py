"""Dynamic batching: concurrent Score calls share text-encoder batches.

The encoder is far more efficient on one large batch than on many small ones,
so a call's prompts wait up to `max_delay_s` for other calls to join. The
queue is bounded in prompts: beyond it a call is refused (QueueFullError),
never left to grow memory without limit. A prompt travels as its token ids:
the scorer tokenized it once to check it, and the encoder reads those ids. A batch never exceeds
`max_batch_prompts`: a bigger call is encoded over several batches, so a call
its client cancels stops using the encoder after the batch in hand.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog
import torch

from scorer_service import metrics

log = structlog.get_logger(__name__)


class QueueFullError(RuntimeError):
    """More prompts are waiting than the server accepts; the caller should retry later."""


@dataclass
class _Job:
    prompts: Sequence[Sequence[int]]  # token ids
    prefixes: Sequence[str | None]
    future: asyncio.Future[torch.Tensor]
    enqueued: float = field(default_factory=time.perf_counter)
    taken: int = 0  # prompts already taken into batches
    parts: list[torch.Tensor] = field(default_factory=list)  # their embeddings, batch by batch


class TextEncodeBatcher:
    """Runs `encode(ids, prefixes) -> embeddings` on one worker thread, on merged batches.

    `ids[i]` is prompt i's token ids (ClipEncoder.encode_ids); `prefixes[i]` is
    the text before the class name in prompt i, when known; the encoder shares
    work between prompts with the same prefix.
    """

    def __init__(
        self,
        encode: Callable[[Sequence[Sequence[int]], Sequence[str | None]], torch.Tensor],
        max_batch_prompts: int,
        max_delay_s: float,
        max_queued_prompts: int,
    ) -> None:
        self._encode = encode
        self.max_batch_prompts = max_batch_prompts
        self.max_delay_s = max_delay_s
        self.max_queued_prompts = max_queued_prompts
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-encoder")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="text-encode-batcher")

    async def close(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def encode(
        self, prompts: Sequence[Sequence[int]], prefixes: Sequence[str | None] | None = None
    ) -> torch.Tensor:
        """Embeddings of `prompts` (token ids), in order, computed in a shared batch."""
        if not prompts:
            raise ValueError("no prompts to encode")
        if self._queued + len(prompts) > self.max_queued_prompts:
            raise QueueFullError(
                f"{self._queued} class prompts are already waiting for the encoder (limit {self.max_queued_prompts})"
            )
        job = _Job(prompts, prefixes or [None] * len(prompts), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued + len(prompts))
        self._wakeup.set()
        return await job.future

    def _set_queued(self, value: int) -> None:
        self._queued = value
        metrics.QUEUED_PROMPTS.set(value)

    def _take_batch(self) -> list[tuple[_Job, int, int]]:
        """Up to max_batch_prompts prompts, as (job, start, end) slices: whole jobs while they fit, else a slice
        of the first; jobs whose caller gave up (their future is done) are dropped, their prompts never encoded."""
        batch: list[tuple[_Job, int, int]] = []
        size = 0
        while self._jobs and size < self.max_batch_prompts:
            job = self._jobs[0]
            remaining = len(job.prompts) - job.taken
            if job.future.done():
                self._jobs.popleft()
                self._set_queued(self._queued - remaining)
                if job.future.cancelled():
                    metrics.ABANDONED_PROMPTS.inc(remaining)
                continue
            room = self.max_batch_prompts - size
            if batch and remaining > room:
                break
            end = job.taken + min(remaining, room)
            batch.append((job, job.taken, end))
            size += end - job.taken
            job.taken = end
            if end == len(job.prompts):
                self._jobs.popleft()
        self._set_queued(self._queued - size)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._jobs:
                if self._queued < self.max_batch_prompts and self.max_delay_s > 0:
                    await asyncio.sleep(self.max_delay_s)  # let concurrent calls join this batch
                batch = self._take_batch()
                if not batch:
                    continue
                prompts = [p for job, start, end in batch for p in job.prompts[start:end]]
                prefixes = [p for job, start, end in batch for p in job.prefixes[start:end]]
                now = time.perf_counter()
                for job, start, _ in batch:
                    if start == 0:
                        metrics.QUEUE_WAIT.observe(now - job.enqueued)
                metrics.BATCH_PROMPTS.observe(len(prompts))
                metrics.BATCH_REQUESTS.observe(len(batch))
                try:
                    embeddings = await loop.run_in_executor(self._executor, self._timed_encode, prompts, prefixes)
                except Exception as err:  # fail this batch's calls, keep serving
                    log.exception("text_encode_failed", prompts=len(prompts))
                    for job, _, _ in batch:
                        if not job.future.done():
                            job.future.set_exception(err)  # a remainder still queued is dropped with it
                    continue
                offset = 0
                for job, start, end in batch:
                    if not job.future.done():
                        job.parts.append(embeddings[offset : offset + end - start])
                        if end == len(job.prompts):
                            job.future.set_result(job.parts[0] if len(job.parts) == 1 else torch.cat(job.parts))
                    offset += end - start

    def _timed_encode(self, prompts: list[Sequence[int]], prefixes: list[str | None]) -> torch.Tensor:
        started = time.perf_counter()
        try:
            return self._encode(prompts, prefixes)
        finally:
            metrics.ENCODE_SECONDS.observe(time.perf_counter() - started)
