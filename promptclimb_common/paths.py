"""The writable paths of a service, checked before it loads anything.

In a container the root filesystem is read-only and only mounted volumes can
be written. A path off those volumes must stop the service at once, naming the
flag that set it, rather than after minutes of loading a model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class UnwritablePathError(RuntimeError):
    """A directory the service must write cannot be written; the message names the flag and the fix."""


@dataclass(frozen=True)
class WritablePath:
    flag: str  # e.g. "--state-dir"
    env: str  # the variable that sets the flag's default, e.g. "SCORER_STATE_DIR"
    path: Path

    def error(self, reason: str) -> UnwritablePathError:
        return UnwritablePathError(
            f"{self.flag} {self.path} ({Path(self.path).absolute()}) is not writable: {reason}. Mount a writable "
            f"volume there, or point {self.flag} (env {self.env}) at a writable directory"
        )


def require_writable(paths: Iterable[WritablePath]) -> None:
    """Creates each directory and writes a file in it; raises UnwritablePathError at the first that fails."""
    for wanted in paths:
        try:
            Path(wanted.path).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=wanted.path, prefix=".write-check-"):
                pass
        except OSError as err:
            raise wanted.error(err.strerror or str(err)) from None
