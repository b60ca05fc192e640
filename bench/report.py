"""Benchmark tables: printed, and written where the README quotes them from."""

from __future__ import annotations

from pathlib import Path


def write_table(path: Path, lines: list[str]) -> None:
    table = "\n".join(lines)
    print(table, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
