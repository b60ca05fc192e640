"""Per-token evaluation budgets, kept in SQLite so a restart does not reset them.

A black-box scorer can be mined by asking it enough questions; a budget bounds
how many templates one token can ever have scored. Templates are charged
before they are scored, in one transaction, so concurrent calls cannot
overspend.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from scorer_service import metrics


class BudgetExhaustedError(RuntimeError):
    """The token's evaluation budget cannot cover this request."""


class EvaluationLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a power cut may lose the last charges
        self._db.execute("CREATE TABLE IF NOT EXISTS evaluations (token TEXT PRIMARY KEY, used INTEGER NOT NULL)")
        self._db.execute("BEGIN IMMEDIATE")  # proves the file is writable now, not at the first charge
        self._db.execute("COMMIT")
        self._lock = threading.Lock()

    def used(self, token: str) -> int:
        row = self._db.execute("SELECT used FROM evaluations WHERE token = ?", (token,)).fetchone()
        return row[0] if row else 0

    def charge(self, token: str, count: int, budget: int) -> int:
        """Adds `count` evaluations to `token`; returns the new total or raises BudgetExhaustedError."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = self.used(token)
                if budget and used + count > budget:
                    raise BudgetExhaustedError(
                        f"evaluation budget of token '{token}' is spent: {used} of {budget} templates used, "
                        f"this request needs {count}"
                    )
                self._db.execute(
                    "INSERT INTO evaluations (token, used) VALUES (?, ?) "
                    "ON CONFLICT(token) DO UPDATE SET used = used + excluded.used",
                    (token, count),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        metrics.TOKEN_EVALUATIONS.labels(token).inc(count)
        return used + count

    def close(self) -> None:
        self._db.close()
