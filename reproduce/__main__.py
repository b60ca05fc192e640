"""`python -m reproduce --config reproduce/paper.toml`: run (or resume) the grid, then write its tables and plots.

On a finished grid nothing runs and no model loads: the tables are rewritten from the files on disk."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structlog

from promptclimb_common.logging import configure_logging
from reproduce.grid import GridError, load_grid
from reproduce.runner import ScorerStartError, run_grid
from reproduce.tables import write_plots, write_tables

log = structlog.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("reproduce/paper.toml"), help="the grid (TOML)")
    parser.add_argument("--out", type=Path, default=None, help="overrides the config's out")
    parser.add_argument("--log-level", default="INFO")
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    try:
        grid = load_grid(ns.config, ns.out)
        failed = run_grid(grid, ns.log_level)
    except (GridError, ScorerStartError) as err:  # one line that names the cause, no traceback
        print(f"reproduce: {err}", file=sys.stderr)
        return 2
    tables = write_tables(grid)
    plots = write_plots(grid)
    log.info("reproduce_written", tables=[str(p) for p in tables], plots=len(plots), cells_not_done=failed)
    print((grid.out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
