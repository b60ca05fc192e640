"""`python -m reproduce --config reproduce/paper.toml`: run (or resume) the grid, then write its tables and plots.

On a finished grid nothing runs and no model loads: the tables are rewritten from the files on disk.
Spread over machines (the Kubernetes Indexed Job of deploy/k8s/reproduce): `--cell N` runs cell N only
(`--list-cells` shows the numbering), and once every cell is done, `--gather` scores the reference rows and
transfers and writes the same tables."""

from __future__ import annotations

import sys
from pathlib import Path

import structlog

from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.logging import configure_logging
from reproduce.grid import GridError, cells, load_grid
from reproduce.runner import ScorerStartError, gather, run_cell, run_grid
from reproduce.tables import write_plots, write_tables

log = structlog.get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m reproduce", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("reproduce/paper.toml"), help="the grid (TOML)")
    parser.add_argument("--out", type=Path, default=None, help="overrides the config's out")
    parser.add_argument("--log-level", default="INFO")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--cell", type=int, help="run only this cell (0-based; see --list-cells), no tables")
    step.add_argument("--gather", action="store_true", help="after every cell: reference rows, transfers, tables")
    step.add_argument("--list-cells", action="store_true", help="print each cell's index: backbone, dataset, seed")
    ns = parser.parse_args(argv)
    configure_logging(ns.log_level)
    try:
        grid = load_grid(ns.config, ns.out)
        if ns.list_cells:
            for index, cell in enumerate(cells(grid)):
                print(f"{index}\t{cell.backbone.name}\t{cell.dataset}\t{cell.seed}")
            return 0
        if ns.cell is not None:
            failed = run_cell(grid, ns.cell, ns.log_level)
            log.info("cell_done" if not failed else "cell_not_done", cell=ns.cell, runs_not_done=failed)
            return 1 if failed else 0
        failed = gather(grid) if ns.gather else run_grid(grid, ns.log_level)
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
