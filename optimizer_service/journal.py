"""Where a climb commits its progress: candidates, steps, counters and the events reporting them, in one transaction."""

from __future__ import annotations

from optimizer_service import metrics
from optimizer_service.climb import Counters
from optimizer_service.events import counters_proto
from optimizer_service.pool import Candidate, Pool
from optimizer_service.signals import Signal
from optimizer_service.store import Step, Store
from promptclimb.optimizer.v1 import optimizer_pb2 as pb


class RunJournal:
    """Commits a climb's progress together with the events that report it, then wakes the run's watchers."""

    def __init__(self, store: Store, run_id: str, pool: Pool, counters: Counters, signal: Signal) -> None:
        self.store, self.run_id, self.pool, self.counters, self.signal = store, run_id, pool, counters, signal
        best = pool.best()
        self._best_accuracy = best[0].accuracy if best else -1.0
        if best:
            metrics.BEST_TRAIN_ACCURACY.labels(run_id).set(self._best_accuracy)

    async def record(
        self,
        candidates: list[Candidate],
        steps: list[Step],
        iteration: tuple[int, int, int] | None,
        rejected: list[tuple[str, str]],
    ) -> None:
        events: list[pb.RunEvent] = []
        for c in candidates:
            events.append(
                pb.RunEvent(
                    candidate_scored=pb.CandidateScored(
                        template=c.template,
                        train_accuracy=c.accuracy,
                        restart=c.restart,
                        reset=c.reset,
                        iteration=c.iteration,
                        llm_call=c.llm_call,
                        candidate_sequence=c.sequence,
                        reused=c.reused,
                        position=c.position,
                    )
                )
            )
        best = self.pool.best()
        if best and best[0].accuracy > self._best_accuracy:
            self._best_accuracy = best[0].accuracy
            events.append(pb.RunEvent(new_best=pb.NewBest(template=best[0].template, train_accuracy=best[0].accuracy)))
            metrics.BEST_TRAIN_ACCURACY.labels(self.run_id).set(best[0].accuracy)
        if iteration is not None:
            restart, reset, index = iteration
            events.append(
                pb.RunEvent(
                    iteration_done=pb.IterationDone(
                        restart=restart,
                        reset=reset,
                        iteration=index,
                        best_train_accuracy=max(self._best_accuracy, 0.0),
                        mean_train_accuracy=self.pool.mean_accuracy(),
                        counters=counters_proto(self.counters.to_json()),
                    )
                )
            )
        await self.store.commit_progress(self.run_id, candidates, self.counters.to_json(), events, steps, rejected)
        self.signal.fire()
