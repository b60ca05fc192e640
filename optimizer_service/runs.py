"""The life of a run inside the service: start, search, finish; resume after a restart; cancel; watch.

A run is a row in the store and, while it searches, an asyncio task. The task
never lets an error escape: a run ends SUCCEEDED (finished or a budget
reached), FAILED (with the reason; it stays resumable) or CANCELLED. A run is
pinned to the scorer model it started on (its digest), so a rollout of another
model under it fails it (resumably) instead of mixing accuracies. A service
shutdown stops the tasks without ending the runs, so the next start resumes
them. Progress is committed by the journal (journal.py) and reported as events
(events.py).

A run belongs to the principal that started it: every read or change names
its caller, and a caller who is not the owner (nor an `admin`) is told the run
does not exist. Test accuracies are measured only for an owner with the `test`
right, and shown only to callers with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from optimizer_service import answer, events, metrics
from optimizer_service.climb import Climb, Counters, SearchFailed
from optimizer_service.events import counters_proto
from optimizer_service.fair_slots import FairSlots
from optimizer_service.journal import RunJournal
from optimizer_service.llm import LlmClient, LlmUnavailable
from optimizer_service.pool import INITIAL, Candidate, Pool, distinct
from optimizer_service.scorer_client import ModelChanged, ScorerClient, ScorerError, ScorerUnavailable
from optimizer_service.signals import Signal
from optimizer_service.spec import OwnerShares, RunLimits, RunSettings, SpecError
from optimizer_service.store import RunRecord, Store, StoreError
from optimizer_service.strategies import STRATEGIES
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.auth import Principal
from promptclimb_common.paging import PageError, decode_token, encode_token, page_size

log = structlog.get_logger(__name__)

PENDING, RUNNING = "PENDING", "RUNNING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
ENDED = frozenset({SUCCEEDED, FAILED, CANCELLED})
MAX_WAITING_RUNS = 100  # runs queued behind the active ones; more are refused
RUNS_PAGE_SIZE, MAX_RUNS_PAGE_SIZE = 50, 500
# A full run holds up to 256 KB of initial templates, 50 best and 32 ensemble members: 10 of them fit a 4 MiB message.
MAX_FULL_RUNS_PAGE_SIZE = 10
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The caller of a local `run` (the CLI): it owns its state directory and its scorer token, so it sees everything.
LOCAL = Principal("local", frozenset({"run", "test", "admin"}))


class RunNotFound(LookupError):
    pass


class RunStateError(Exception):
    """The run is in a state that does not allow the request."""


class TooManyRuns(Exception):
    """The queue of runs, or the caller's share of it, is full; `metadata` names the bound (ErrorInfo)."""

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.metadata = metadata


class OwnerBudgetSpent(Exception):
    """The caller's share of scored templates cannot cover the run; the message tells only the caller's own figures."""

    def __init__(self, owner: str, used: int, share: int, wanted: int) -> None:
        super().__init__(
            f"your share of scored templates is spent: {used} of {share} are scored or reserved by your runs, and this "
            f"run may score {wanted}; wait for a run to end, cancel one, or ask for a smaller max_scored_templates"
        )
        self.owner, self.used, self.share = owner, used, share


class RequestIdReused(Exception):
    """A StartRun request_id was used before with a different spec."""


def _timestamp(unix_seconds: float) -> Timestamp:
    value = Timestamp()
    value.FromNanoseconds(round(unix_seconds * 1e9))
    return value


def may_see(caller: Principal, record: RunRecord) -> bool:
    return record.owner == caller.name or caller.has("admin")


def summary(run: pb.Run) -> pb.Run:
    """RUN_VIEW_BASIC: the run without what can be large (the spec but its task and label, the best but the first,
    the ensemble)."""
    brief = pb.Run()
    brief.CopyFrom(run)
    brief.spec.Clear()
    brief.spec.task_id, brief.spec.label = run.spec.task_id, run.spec.label
    del brief.best[1:]
    brief.ClearField("ensemble")
    return brief


class RunManager:
    def __init__(
        self,
        store: Store,
        llm: LlmClient,
        scorer: ScorerClient,
        *,
        max_active_runs: int,
        default_model: str,
        limits: RunLimits = RunLimits(),
        shares: OwnerShares = OwnerShares(),
    ) -> None:
        self.store, self.llm, self.scorer = store, llm, scorer
        self.default_model, self.limits, self.shares = default_model, limits, shares
        self._slots = FairSlots(max_active_runs)
        self._tasks: dict[str, asyncio.Task] = {}
        self._owners: dict[str, str] = {}  # run id -> owner, of the runs active or waiting
        self._cancelling: set[str] = set()
        self._signals: dict[str, Signal] = {}
        self._refresh_gauges()

    # Lifecycle --------------------------------------------------------------

    async def start(self, spec: pb.RunSpec, owner: Principal, request_id: str = "") -> pb.Run:
        """Validates the spec (and that the scorer has its task), stores the run as `owner`'s, pinned to the scorer's
        model, and launches it.

        A `request_id` the owner used before returns its run (stored, so across restarts too) instead of starting
        another.
        """
        settings = RunSettings.from_proto(spec, self.default_model, self.limits)
        if request_id and not REQUEST_ID.fullmatch(request_id):
            raise SpecError(
                "request_id must be 1 to 64 letters, digits, '-' or '_' (a UUID is a good choice), or empty"
            )
        if request_id and (earlier := self.store.run_by_request_id(owner.name, request_id)) is not None:
            return self._repeated(earlier, settings, owner)
        replayed = self.store.run(settings.replay_run_id) if settings.replay_run_id else None
        if settings.replay_run_id and (replayed is None or not may_see(owner, replayed)):
            raise SpecError(
                f"replay_run_id: no run {settings.replay_run_id!r} to replay; ListRuns shows the known ones"
            )
        self._check_shares(owner.name, settings.max_scored_templates)
        try:
            task = await self.scorer.task(settings.task_id, grace_s=0)
        except ScorerError as err:
            raise SpecError(f"task_id: {err}") from None
        run_id = uuid.uuid4().hex
        counters = Counters(iterations_total=settings.iterations_total)
        record = await self.store.create_run(
            run_id,
            settings.to_json(),
            counters.to_json(),
            PENDING,
            owner=owner.name,
            owner_may_test=owner.has("test"),
            request_id=request_id or None,
            model_digest=task.model_digest,
        )
        if record.run_id != run_id:  # a concurrent repeat stored it first
            return self._repeated(record, settings, owner)
        log.info(
            "run_created",
            run_id=run_id,
            task_id=settings.task_id,
            label=settings.label,
            model_digest=task.model_digest,
            model_version=task.model_version,
        )
        self._launch(run_id)
        return self.get(run_id, owner)

    def _repeated(self, earlier: RunRecord, settings: RunSettings, caller: Principal) -> pb.Run:
        """The run an earlier StartRun with the same request_id created, if it asked for the same spec."""
        if earlier.settings != settings.to_json():
            raise RequestIdReused(
                f"request_id {earlier.request_id!r} already started run {earlier.run_id} "
                "with another spec; use a new request_id for a new run"
            )
        log.info("run_start_repeated", run_id=earlier.run_id, request_id=earlier.request_id)
        return self.get(earlier.run_id, caller)

    def _check_shares(self, owner: str, scored_templates: int, resumed: str = "") -> None:
        """Refuses a run (a new one, or `resumed`) the queue or the owner's shares cannot take (TooManyRuns,
        OwnerBudgetSpent)."""
        if len(self._tasks) >= MAX_WAITING_RUNS:
            raise TooManyRuns(
                f"{MAX_WAITING_RUNS} runs are active or waiting; wait for one to end or cancel one",
                limit=str(MAX_WAITING_RUNS),
                scope="service",
            )
        share = self.shares.max_runs
        if share and sum(1 for o in self._owners.values() if o == owner) >= share:
            raise TooManyRuns(
                f"you have {share} runs active or waiting, your share (--max-runs-per-owner); wait for one to end "
                "or cancel one",
                limit=str(share),
                scope="owner",
            )
        budget = self.shares.max_scored_templates
        if budget:
            used = self.store.scored_or_reserved(owner, ENDED, excluding=resumed)
            if used + scored_templates > budget:
                raise OwnerBudgetSpent(owner, used, budget, scored_templates)

    def resume_unfinished(self) -> list[str]:
        """Relaunches the runs a previous process left PENDING or RUNNING."""
        run_ids = [r.run_id for r in self.store.runs([PENDING, RUNNING])]
        for run_id in run_ids:
            log.info("run_resuming", run_id=run_id)
            self._launch(run_id)
        return run_ids

    async def resume(self, run_id: str, caller: Principal) -> pb.Run:
        """Continues a run that failed, was cancelled, or was left unfinished by another process."""
        record = self._record(run_id, caller)
        task = self._tasks.get(run_id)
        if record.state not in ENDED and task is not None and not task.done():
            raise RunStateError(f"run {run_id} is {record.state} and still searching; nothing to resume")
        if record.state == SUCCEEDED:
            raise RunStateError(f"run {run_id} SUCCEEDED; only FAILED or CANCELLED runs can be resumed")
        self._check_shares(record.owner, RunSettings.from_json(record.settings).max_scored_templates, run_id)
        await self.store.set_state(run_id, PENDING, "", record.counters)
        self._launch(run_id)
        return self.get(run_id, caller)

    async def cancel(self, run_id: str, caller: Principal) -> pb.Run:
        record = self._record(run_id, caller)
        task = self._tasks.get(run_id)
        if record.state in ENDED or task is None or task.done():
            raise RunStateError(f"run {run_id} already ended ({record.state})")
        self._cancelling.add(run_id)
        task.cancel()
        await asyncio.wait([task])
        return self.get(run_id, caller)

    async def shutdown(self) -> None:
        """Stops every run task, leaving the runs unfinished so the next start resumes them."""
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _launch(self, run_id: str) -> None:
        self._signals.setdefault(run_id, Signal())
        self._owners[run_id] = self._record(run_id).owner
        self._tasks[run_id] = asyncio.create_task(self._drive(run_id), name=f"run-{run_id}")
        self._refresh_gauges()

    async def _drive(self, run_id: str) -> None:
        """Waits for a slot, then searches; turns every outcome into a final state."""
        structlog.contextvars.clear_contextvars()  # the task was born inside an RPC; its logs belong to the run
        structlog.contextvars.bind_contextvars(run_id=run_id)
        counters = None  # what the run has spent; kept whichever way it ends
        try:
            async with self._slots.slot(self._owners[run_id]):
                record = self._record(run_id)
                counters = Counters.from_json(record.counters)
                await self.store.set_state(run_id, RUNNING, "", record.counters)
                self._refresh_gauges()
                stop_reason = await self._search(
                    run_id, RunSettings.from_json(record.settings), counters, record.model_digest, record.owner_may_test
                )
            await self._finish(run_id, SUCCEEDED, stop_reason, counters)
        except asyncio.CancelledError:
            if run_id in self._cancelling:
                await self._finish(run_id, CANCELLED, "cancelled", counters)
            raise
        except ModelChanged as err:
            log.warning("run_failed", reason=str(err))
            advice = "resume the run once the scorer serves its pinned model again, or start a new run on the new model"
            await self._finish(run_id, FAILED, f"{err}; {advice}", counters)
        except (LlmUnavailable, ScorerUnavailable, SearchFailed, StoreError) as err:
            log.warning("run_failed", reason=str(err))
            await self._finish(run_id, FAILED, str(err), counters)
        except Exception as err:  # one run's bug must not take the service down
            log.exception("run_crashed")
            await self._finish(run_id, FAILED, f"internal error: {err!r}", counters)
        finally:
            self._cancelling.discard(run_id)
            self._tasks.pop(run_id, None)
            self._owners.pop(run_id, None)
            with contextlib.suppress(KeyError):  # the run never scored anything
                metrics.BEST_TRAIN_ACCURACY.remove(run_id)

    async def _search(
        self, run_id: str, settings: RunSettings, counters: Counters, pinned_digest: str, measure_test: bool
    ) -> str:
        """Rebuilds the run from the store, climbs with the spec's strategy, then computes the answer (answer.py):
        selection on val, the ensemble, and test accuracy of the reported templates (only for an owner with the test
        right: for others the scorer is never asked for the test split); returns the stop reason."""
        pool = Pool(self.store.candidates(run_id), self.store.rejections(run_id))
        steps = {key: step for key, step in self.store.steps(run_id).items() if key[0] != INITIAL}
        task = await self.scorer.task(settings.task_id)
        if pinned_digest and task.model_digest != pinned_digest:
            raise ModelChanged(
                f"scorer model changed: model_digest {pinned_digest} was pinned, but the scorer serves "
                f"model_digest {task.model_digest} (version {task.model_version!r})"
            )
        task.model_digest = pinned_digest  # every Score call of the climb pins it (a run stored before pinning: none)
        journal = RunJournal(self.store, run_id, pool, counters, self._signals[run_id])
        climb = Climb(run_id, settings, task, self.llm, self.scorer, journal, pool, steps, counters)
        strategy = STRATEGIES[settings.strategy](climb)
        stop_reason = await climb.run(strategy)
        val = await answer.val_accuracies(climb)
        await self.store.set_val_accuracies(run_id, val)
        choice = answer.selected(pool.best(len(pool)), val)  # as Run.selected reads it (_best)
        class_prompts = await strategy.refine(choice) if choice is not None and stop_reason == "finished" else None
        ensemble = await answer.ensemble(climb)
        singles: dict[int, float] = {}
        ensemble_test: float | None = None
        if measure_test:
            tested = distinct([*pool.best(settings.report_top), *([choice] if choice else [])])
            singles, ensemble_test = await answer.test_accuracies(climb, tested, ensemble)
            if class_prompts is not None:
                class_prompts = await answer.with_test_accuracy(climb, class_prompts)
        if class_prompts is not None:
            await self.store.set_class_prompts(run_id, class_prompts)
        await self.store.set_test_accuracies(run_id, singles)
        if ensemble is not None:
            await self.store.set_ensemble(run_id, ensemble.templates, ensemble.accuracy, ensemble_test)
        return stop_reason

    async def _finish(self, run_id: str, state: str, reason: str, counters: Counters | None = None) -> None:
        try:
            record = self._record(run_id)
            counter_values = counters.to_json() if counters else record.counters
            best, selected = self._best(
                run_id, RunSettings.from_json(record.settings).report_top, record.owner_may_test
            )
            ended = pb.RunEvent(
                run_ended=pb.RunEnded(
                    state=f"RUN_STATE_{state}",
                    stop_reason=reason,
                    best=best,
                    ensemble=self._ensemble(run_id, record.owner_may_test),
                    selected=selected,
                )
            )
            await self.store.set_state(run_id, state, reason, counter_values, [ended])
        except StoreError:
            log.exception("run_end_not_stored", state=state, reason=reason)
        log.info("run_ended", run_id=run_id, state=state, reason=reason)
        self._signals.setdefault(run_id, Signal()).fire()
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        counts = self.store.count_by_state()
        for state in (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED):
            metrics.RUNS.labels(state).set(counts.get(state, 0))

    # Reading ----------------------------------------------------------------

    def _record(self, run_id: str, caller: Principal | None = None) -> RunRecord:
        """The run's record; RunNotFound also when `caller` may not see it (its existence is not told)."""
        record = self.store.run(run_id)
        if record is None or (caller is not None and not may_see(caller, record)):
            raise RunNotFound(f"no run with id {run_id!r}; ListRuns shows the known ones")
        return record

    def _best(self, run_id: str, n: int, with_test: bool) -> tuple[list[pb.ScoredTemplate], pb.ScoredTemplate | None]:
        """The run's n best distinct templates (pool.py's ranking) and its selection (answer.selected), with their
        val accuracy where measured, and test accuracy where measured and `with_test`."""
        tested = self.store.test_accuracies(run_id) if with_test else {}
        val = self.store.val_accuracies(run_id)
        pool = Pool(self.store.candidates(run_id))

        def scored(candidate: Candidate) -> pb.ScoredTemplate:
            out = pb.ScoredTemplate(template=candidate.template, train_accuracy=candidate.accuracy)
            if candidate.sequence in tested:
                out.test_accuracy = tested[candidate.sequence]
            if candidate.sequence in val:
                out.val_accuracy = val[candidate.sequence]
            return out

        choice = answer.selected(pool.best(len(pool)), val)
        return [scored(c) for c in pool.best(n)], scored(choice) if choice else None

    def _class_prompts(self, run_id: str, with_test: bool) -> pb.ScoredClassPrompts | None:
        stored = self.store.class_prompts(run_id)
        if stored is None:
            return None
        found = pb.ScoredClassPrompts(
            classes=[
                pb.ClassPromptList(class_name=name, prompts=prompts)
                for name, prompts in zip(stored.class_names, stored.prompts, strict=True)
            ],
            train_accuracy=stored.train_accuracy,
            chosen=stored.chosen,
        )
        if stored.val_accuracy is not None:
            found.val_accuracy = stored.val_accuracy
        if stored.test_accuracy is not None and with_test:
            found.test_accuracy = stored.test_accuracy
        return found

    def _ensemble(self, run_id: str, with_test: bool) -> pb.ScoredEnsemble | None:
        stored = self.store.ensemble(run_id)
        if stored is None:
            return None
        templates, train_accuracy, test_accuracy = stored
        ensemble = pb.ScoredEnsemble(templates=templates, train_accuracy=train_accuracy)
        if test_accuracy is not None and with_test:
            ensemble.test_accuracy = test_accuracy
        return ensemble

    def get(self, run_id: str, caller: Principal) -> pb.Run:
        return self._run_proto(self._record(run_id, caller), caller)

    def list(
        self,
        caller: Principal,
        size: int = 0,
        token: str = "",
        states: list[int] | None = None,
        view: int = pb.RUN_VIEW_BASIC,
    ) -> tuple[list[pb.Run], str]:
        """A page of the caller's runs (an admin's: every run), newest first, optionally only in `states` (RunState
        values), each in full or as a summary (`view`, AIP-157); returns it and the next page's token."""
        names = sorted({pb.RunState.Name(s).removeprefix("RUN_STATE_") for s in states or () if self._known_state(s)})
        if view not in pb.RunView.values():
            raise PageError("view", f"view: {view} is not a run view; use RUN_VIEW_BASIC or RUN_VIEW_FULL")
        full = view == pb.RUN_VIEW_FULL
        limit = page_size(size, RUNS_PAGE_SIZE, MAX_FULL_RUNS_PAGE_SIZE if full else MAX_RUNS_PAGE_SIZE)
        position = decode_token(token, ((int, float), str), names)
        owner = None if caller.has("admin") else caller.name
        records = self.store.runs_page(names or None, tuple(position) if position else None, limit + 1, owner)
        last = records[limit - 1] if len(records) > limit else None
        next_token = encode_token([last.created, last.run_id], names) if last else ""
        runs = [self._run_proto(record, caller) for record in records[:limit]]
        return (runs if full else [summary(run) for run in runs]), next_token

    @staticmethod
    def _known_state(state: int) -> bool:
        if state not in pb.RunState.values() or state == pb.RUN_STATE_UNSPECIFIED:
            raise PageError(
                "states", f"states: {state} is not a run state; use RUN_STATE_PENDING .. RUN_STATE_CANCELLED"
            )
        return True

    def _run_proto(self, record: RunRecord, caller: Principal) -> pb.Run:
        settings = RunSettings.from_json(record.settings)
        with_test = caller.has("test")
        best, selected = self._best(record.run_id, settings.report_top, with_test)
        return pb.Run(
            run_id=record.run_id,
            spec=settings.to_proto(),
            state=f"RUN_STATE_{record.state}",
            stop_reason=record.stop_reason,
            best=best,
            selected=selected,
            ensemble=self._ensemble(record.run_id, with_test),
            class_prompts=self._class_prompts(record.run_id, with_test),
            counters=counters_proto(record.counters),
            create_time=_timestamp(record.created),
            update_time=_timestamp(record.updated),
            model_digest=record.model_digest,
            owner=record.owner,
        )

    async def watch(self, run_id: str, caller: Principal, after_sequence: int = 0) -> AsyncIterator[pb.RunEvent]:
        """The run's events after `after_sequence`, then live ones until the run ends (events.watch)."""
        self._record(run_id, caller)
        signal = self._signals.setdefault(run_id, Signal())
        stream = events.watch(
            self.store,
            run_id,
            signal,
            lambda: self._record(run_id).state in ENDED,
            after_sequence=after_sequence,
            with_test=caller.has("test"),
        )
        async for event in stream:
            yield event
