"""SQLite persistence of runs: spec, pool, scorer refusals, steps (the conversation), counters, events, ensemble,
LLM replies.

A run may be killed at any instant, so the rule is: commit before relying. An
LLM reply is stored the moment it arrives (the response cache), and a finished
iteration (its messages, reply, scored candidates, counters and events) is
committed in one transaction before the climb moves on. A restarted service
rebuilds each run from these rows and re-asks the LLM only for iterations that
had not finished. WAL mode lets readers (GetRun, WatchRun) run beside the
writer; synchronous=FULL makes a commit survive power loss, not just SIGKILL.

Such a commit waits for the disk, so every write runs on one writer thread that
owns its own connection (the only shape sqlite3 connections are safe in), one
transaction at a time in the order they were asked; the event loop awaits it
and keeps answering meanwhile. Reads use a second connection on the caller's
thread: in WAL mode they never wait for the writer.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from optimizer_service.pool import Candidate
from promptclimb.optimizer.v1 import optimizer_pb2 as pb

log = structlog.get_logger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    state TEXT NOT NULL,
    stop_reason TEXT NOT NULL DEFAULT '',
    counters TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    request_id TEXT,
    model_digest TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS candidates (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    template TEXT NOT NULL,
    accuracy REAL NOT NULL,
    restart INTEGER NOT NULL,
    reset INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    llm_call TEXT NOT NULL,
    test_accuracy REAL,
    position INTEGER NOT NULL DEFAULT 0,
    reused INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, sequence)
);
CREATE TABLE IF NOT EXISTS rejections (
    run_id TEXT NOT NULL,
    template TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (run_id, template)
);
CREATE TABLE IF NOT EXISTS class_prompts (
    run_id TEXT PRIMARY KEY,
    prompts TEXT NOT NULL,
    train_accuracy REAL NOT NULL,
    val_accuracy REAL,
    test_accuracy REAL,
    chosen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ensembles (
    run_id TEXT PRIMARY KEY,
    templates TEXT NOT NULL,
    train_accuracy REAL NOT NULL,
    test_accuracy REAL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    restart INTEGER NOT NULL,
    reset INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    llm_call TEXT NOT NULL,
    messages TEXT NOT NULL,
    reply TEXT,
    PRIMARY KEY (run_id, restart, reset, iteration)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (run_id, sequence)
);
CREATE TABLE IF NOT EXISTS llm_cache (
    key TEXT PRIMARY KEY,
    content TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
);
"""
# Columns added after a table's first release: (table, column, definition), added to older databases when opened.
ADDED_COLUMNS = (
    ("candidates", "position", "INTEGER NOT NULL DEFAULT 0"),
    ("candidates", "reused", "INTEGER NOT NULL DEFAULT 0"),
    ("candidates", "val_accuracy", "REAL"),
    ("runs", "request_id", "TEXT"),
    ("runs", "model_digest", "TEXT NOT NULL DEFAULT ''"),
    # Runs stored before ownership belong to the anonymous caller (auth off) and are seen by admins; none measures test.
    ("runs", "owner", "TEXT NOT NULL DEFAULT 'anonymous'"),
    ("runs", "owner_may_test", "INTEGER NOT NULL DEFAULT 0"),
)
# After ADDED_COLUMNS, which may have just added the columns it indexes. A request_id is the owner's: two callers
# choosing the same one start two runs, and neither can reach the other's through it.
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS runs_by_request_id ON runs (owner, request_id) WHERE request_id IS NOT NULL;"
)
RUN_COLUMNS = (
    "run_id, settings, state, stop_reason, counters, created, updated, request_id, model_digest, owner, owner_may_test"
)
CANDIDATE_COLUMNS = "template, accuracy, restart, reset, iteration, sequence, llm_call, position, reused"


class StoreError(RuntimeError):
    """The state directory or database cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    settings: dict
    state: str
    stop_reason: str
    counters: dict
    created: float
    updated: float
    request_id: str | None = None
    model_digest: str = ""  # the scorer model the run is pinned to; empty for runs stored before pinning
    owner: str = "anonymous"  # the token name that started the run
    owner_may_test: bool = False  # the owner's token had the optimizer's `test` right: measure and report test accuracy


@dataclass(frozen=True)
class Step:
    """One finished LLM exchange of a climb: what was sent, what came back (None: skipped after retries)."""

    restart: int
    reset: int
    iteration: int
    llm_call: str
    messages: list[dict]
    reply: str | None


@dataclass(frozen=True)
class ClassPrompts:
    """A per-class strategy's stage 2: per class (label order) its prompts, with their accuracies where measured;
    `chosen`: they, not the selected template, are the run's answer."""

    class_names: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    train_accuracy: float
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    chosen: bool = False


@dataclass(frozen=True)
class CachedReply:
    content: str
    prompt_tokens: int
    completion_tokens: int


class Store:
    def __init__(self, reader: sqlite3.Connection, writer: ThreadPoolExecutor, path: Path) -> None:
        self._db = reader
        self._writer = writer  # one thread; it alone holds the writing connection (_WRITER.db)
        self.path = path

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        """Opens (creating) the state database; an unusable directory fails here, loudly."""
        path = state_dir / "optimizer.sqlite3"
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optimizer-store-writer")
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            writer.submit(_open_writer, path).result()
            reader = _connect(path, check_same_thread=False)
        except (OSError, sqlite3.Error) as err:
            writer.submit(_close_writer).result()
            writer.shutdown()
            raise StoreError(
                f"state dir {state_dir} is not usable: {err}; check that it exists, is writable and has free space"
            ) from None
        log.info("store_opened", path=str(path))
        return cls(reader, writer, path)

    def close(self) -> None:
        self._db.close()
        self._writer.submit(_close_writer).result()
        self._writer.shutdown()

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `work` as one transaction on the writer thread, after every write asked before it.

        Cancelling the caller does not abandon a write it began: it is awaited to its end first, so a cancelled run's
        last commit is done (or failed) before whatever the cancellation writes next."""
        future = asyncio.wrap_future(self._writer.submit(_transact, work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    # Runs -------------------------------------------------------------------

    async def create_run(
        self,
        run_id: str,
        settings: dict,
        counters: dict,
        state: str,
        *,
        owner: str = "anonymous",
        owner_may_test: bool = False,
        request_id: str | None = None,
        model_digest: str = "",
    ) -> RunRecord:
        """Stores a new run; if the owner's `request_id` already names one, stores nothing and returns that run
        instead."""
        now = time.time()

        def create(db: sqlite3.Connection) -> RunRecord | None:
            existing = self._by_request_id(db, owner, request_id)
            if existing is None:
                db.execute(
                    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES (?, ?, ?, '', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        json.dumps(settings),
                        state,
                        json.dumps(counters),
                        now,
                        now,
                        request_id,
                        model_digest,
                        owner,
                        int(owner_may_test),
                    ),
                )
            return existing

        existing = await self._write(create)
        if existing is not None:
            return existing
        created = self.run(run_id)
        assert created is not None, "a committed run reads back"
        return created

    def run_by_request_id(self, owner: str, request_id: str) -> RunRecord | None:
        return self._by_request_id(self._db, owner, request_id)

    @staticmethod
    def _by_request_id(db: sqlite3.Connection, owner: str, request_id: str | None) -> RunRecord | None:
        if request_id is None:
            return None
        row = db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE owner = ? AND request_id = ?", (owner, request_id)
        ).fetchone()
        return _run_record(row) if row else None

    async def set_state(
        self, run_id: str, state: str, stop_reason: str, counters: dict, events: Sequence[pb.RunEvent] = ()
    ) -> None:
        def update(db: sqlite3.Connection) -> None:
            _append_events(db, run_id, events)  # first: its events are stamped no later than the run's update time
            db.execute(
                "UPDATE runs SET state = ?, stop_reason = ?, counters = ?, updated = ? WHERE run_id = ?",
                (state, stop_reason, json.dumps(counters), time.time(), run_id),
            )

        await self._write(update)

    def run(self, run_id: str) -> RunRecord | None:
        row = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_record(row) if row else None

    def runs(self, states: Iterable[str] | None = None) -> list[RunRecord]:
        """Runs oldest first, all or those in `states`."""
        where, values = _in_states(states)
        rows = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY created, run_id", values).fetchall()
        return [_run_record(row) for row in rows]

    def runs_page(
        self, states: Iterable[str] | None, before: tuple[float, str] | None, limit: int, owner: str | None = None
    ) -> list[RunRecord]:
        """Up to `limit` runs newest first, all or those in `states` (and of `owner`), after the run whose
        (created, run_id) is `before`."""
        where, values = _in_states(states)
        if owner is not None:
            where += (" AND" if where else "WHERE") + " owner = ?"
            values += [owner]
        if before is not None:
            where += (" AND" if where else "WHERE") + " (created < ? OR (created = ? AND run_id < ?))"
            values += [before[0], before[0], before[1]]
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY created DESC, run_id DESC LIMIT ?", [*values, limit]
        ).fetchall()
        return [_run_record(row) for row in rows]

    def scored_or_reserved(self, owner: str, ended: Iterable[str], excluding: str = "") -> int:
        """Templates `owner`'s runs have scored, where a run not in an `ended` state counts at least its whole
        max_scored_templates (what it may yet score); the run `excluding` is left out."""
        states = list(ended)
        row = self._db.execute(
            "SELECT COALESCE(SUM(CASE WHEN state IN ({marks}) THEN scored ELSE MAX(scored, budget) END), 0) FROM ("
            "SELECT state, COALESCE(json_extract(counters, '$.templates_scored'), 0) AS scored, "
            "COALESCE(json_extract(settings, '$.max_scored_templates'), 0) AS budget "
            "FROM runs WHERE owner = ? AND run_id != ?)".format(marks=",".join("?" * len(states))),
            [*states, owner, excluding],
        ).fetchone()
        return int(row[0])

    def count_by_state(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall())

    # Progress ---------------------------------------------------------------

    async def commit_progress(
        self,
        run_id: str,
        candidates: Sequence[Candidate],
        counters: dict,
        events: Sequence[pb.RunEvent],
        steps: Sequence[Step] = (),
        rejected: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Commits one step's outcome at once: its exchanges, its candidates, the scorer's refusals, counters and
        events."""

        def commit(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, s.restart, s.reset, s.iteration, s.llm_call, json.dumps(s.messages), s.reply) for s in steps],
            )
            db.executemany(
                f"INSERT INTO candidates (run_id, {CANDIDATE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        c.template,
                        c.accuracy,
                        c.restart,
                        c.reset,
                        c.iteration,
                        c.sequence,
                        c.llm_call,
                        c.position,
                        int(c.reused),
                    )
                    for c in candidates
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO rejections VALUES (?, ?, ?)", [(run_id, t, reason) for t, reason in rejected]
            )
            _append_events(db, run_id, events)
            db.execute(
                "UPDATE runs SET counters = ?, updated = ? WHERE run_id = ?",
                (json.dumps(counters), time.time(), run_id),
            )

        await self._write(commit)

    def candidates(self, run_id: str) -> list[Candidate]:
        rows = self._db.execute(
            f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE run_id = ? ORDER BY sequence", (run_id,)
        )
        return [
            Candidate(t, accuracy, restart, reset, iteration, sequence, call, position, bool(reused))
            for t, accuracy, restart, reset, iteration, sequence, call, position, reused in rows.fetchall()
        ]

    def test_accuracies(self, run_id: str) -> dict[int, float]:
        """Measured test accuracies by candidate sequence."""
        rows = self._db.execute(
            "SELECT sequence, test_accuracy FROM candidates WHERE run_id = ? AND test_accuracy IS NOT NULL", (run_id,)
        )
        return dict(rows.fetchall())

    def rejections(self, run_id: str) -> list[tuple[str, str]]:
        return self._db.execute("SELECT template, reason FROM rejections WHERE run_id = ?", (run_id,)).fetchall()

    async def set_ensemble(
        self, run_id: str, templates: Sequence[str], train_accuracy: float, test_accuracy: float | None
    ) -> None:
        row = (run_id, json.dumps(list(templates)), train_accuracy, test_accuracy)
        await self._write(lambda db: db.execute("INSERT OR REPLACE INTO ensembles VALUES (?, ?, ?, ?)", row))

    def ensemble(self, run_id: str) -> tuple[list[str], float, float | None] | None:
        row = self._db.execute(
            "SELECT templates, train_accuracy, test_accuracy FROM ensembles WHERE run_id = ?", (run_id,)
        ).fetchone()
        return (json.loads(row[0]), row[1], row[2]) if row else None

    async def set_class_prompts(self, run_id: str, found: ClassPrompts) -> None:
        row = (
            run_id,
            json.dumps([[name, list(p)] for name, p in zip(found.class_names, found.prompts, strict=True)]),
            found.train_accuracy,
            found.val_accuracy,
            found.test_accuracy,
            int(found.chosen),
        )
        await self._write(lambda db: db.execute("INSERT OR REPLACE INTO class_prompts VALUES (?, ?, ?, ?, ?, ?)", row))

    def class_prompts(self, run_id: str) -> ClassPrompts | None:
        row = self._db.execute(
            "SELECT prompts, train_accuracy, val_accuracy, test_accuracy, chosen FROM class_prompts WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        pairs = json.loads(row[0])
        return ClassPrompts(
            tuple(name for name, _ in pairs), tuple(tuple(p) for _, p in pairs), row[1], row[2], row[3], bool(row[4])
        )

    def steps(self, run_id: str) -> dict[tuple[int, int, int], Step]:
        rows = self._db.execute(
            "SELECT restart, reset, iteration, llm_call, messages, reply FROM steps WHERE run_id = ?", (run_id,)
        ).fetchall()
        return {(r, s, t): Step(r, s, t, call, json.loads(messages), reply) for r, s, t, call, messages, reply in rows}

    async def set_test_accuracies(self, run_id: str, accuracies: dict[int, float]) -> None:
        await self._set_accuracies(run_id, "test_accuracy", accuracies)

    async def set_val_accuracies(self, run_id: str, accuracies: dict[int, float]) -> None:
        await self._set_accuracies(run_id, "val_accuracy", accuracies)

    async def _set_accuracies(self, run_id: str, column: str, accuracies: dict[int, float]) -> None:
        rows = [(acc, run_id, seq) for seq, acc in accuracies.items()]
        update = f"UPDATE candidates SET {column} = ? WHERE run_id = ? AND sequence = ?"
        await self._write(lambda db: db.executemany(update, rows))

    def val_accuracies(self, run_id: str) -> dict[int, float]:
        """Measured val accuracies by candidate sequence (the templates the answer was selected among)."""
        rows = self._db.execute(
            "SELECT sequence, val_accuracy FROM candidates WHERE run_id = ? AND val_accuracy IS NOT NULL", (run_id,)
        )
        return dict(rows.fetchall())

    # Events -----------------------------------------------------------------

    def events_after(self, run_id: str, sequence: int) -> list[bytes]:
        rows = self._db.execute(
            "SELECT payload FROM events WHERE run_id = ? AND sequence > ? ORDER BY sequence", (run_id, sequence)
        )
        return [row[0] for row in rows.fetchall()]

    def last_event_sequence(self, run_id: str) -> int:
        return _last_event_sequence(self._db, run_id)

    # LLM response cache -----------------------------------------------------

    def cached_reply(self, key: str) -> CachedReply | None:
        row = self._db.execute(
            "SELECT content, prompt_tokens, completion_tokens FROM llm_cache WHERE key = ?", (key,)
        ).fetchone()
        return CachedReply(*row) if row else None

    async def cache_reply(self, key: str, reply: CachedReply) -> None:
        row = (key, reply.content, reply.prompt_tokens, reply.completion_tokens, time.time())
        await self._write(lambda db: db.execute("INSERT OR REPLACE INTO llm_cache VALUES (?, ?, ?, ?, ?)", row))


class _WriterState(threading.local):
    db: sqlite3.Connection | None = None


_WRITER = _WriterState()  # the writing connection, seen only by the writer thread that opened it


def _connect(path: Path, *, check_same_thread: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


def _open_writer(path: Path) -> None:
    """On the writer thread: its connection (sqlite3 refuses it to any other thread), the schema, and a proof that the
    database is writable now, not at the first run."""
    db = _WRITER.db = _connect(path, check_same_thread=True)
    db.executescript(SCHEMA)
    for table, column, definition in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    db.executescript(INDEXES)
    db.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")


def _close_writer() -> None:
    if _WRITER.db is not None:
        _WRITER.db.close()
        _WRITER.db = None


def _transact(work: Callable[[sqlite3.Connection], T]) -> T:
    """On the writer thread: BEGIN IMMEDIATE, `work`, COMMIT; or ROLLBACK, a write failure surfacing as StoreError."""
    db = _WRITER.db
    if db is None:
        raise StoreError("the state database is closed")
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as err:
        raise StoreError(f"cannot write the state database: {err}") from None
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(err, sqlite3.Error):
            raise StoreError(f"cannot write the state database: {err}") from None
        raise
    return result


def _append_events(db: sqlite3.Connection, run_id: str, events: Sequence[pb.RunEvent]) -> None:
    """Numbers the events after the run's last stored one and stores them, in the caller's transaction: numbering and
    storing are one step, so concurrent writers of one run's events cannot take the same number."""
    first = _last_event_sequence(db, run_id) + 1
    now = time.time_ns()
    for offset, event in enumerate(events):
        event.sequence, event.run_id = first + offset, run_id
        event.time.FromNanoseconds(now)
    db.executemany("INSERT INTO events VALUES (?, ?, ?)", [(run_id, e.sequence, e.SerializeToString()) for e in events])


def _last_event_sequence(db: sqlite3.Connection, run_id: str) -> int:
    return int(db.execute("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0])


def _in_states(states: Iterable[str] | None) -> tuple[str, list]:
    if states is None:
        return "", []
    wanted = list(states)
    return f"WHERE state IN ({','.join('?' * len(wanted))})", wanted


def _run_record(row: tuple) -> RunRecord:
    run_id, settings, state, stop_reason, counters, created, updated, request_id, model_digest, owner, may_test = row
    return RunRecord(
        run_id,
        json.loads(settings),
        state,
        stop_reason,
        json.loads(counters),
        created,
        updated,
        request_id,
        model_digest,
        owner,
        bool(may_test),
    )
