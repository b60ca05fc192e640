"""The port file: the ports a service bound, for whoever started it with `--port 0`.

A service started with `--port-file PATH` writes `{"grpc": N, "metrics": M}`
(`metrics` null when off) once it serves, atomically, so a reader never sees a
half-written file. A starter that picks no port itself has no port to race
for: the kernel picks, the service tells.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BoundPorts:
    grpc: int
    metrics: int | None = None

    def write(self, path: Path) -> None:
        """Written aside in the same directory, then renamed into place."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"grpc": self.grpc, "metrics": self.metrics}, out)
            os.replace(aside, path)
        except BaseException:
            Path(aside).unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: Path) -> BoundPorts | None:
        """The ports in `path`; None while it does not exist yet."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return cls(grpc=int(data["grpc"]), metrics=None if data["metrics"] is None else int(data["metrics"]))
