"""The grid `make reproduce` runs, read from a TOML file (reproduce/paper.toml is the paper's).

The grid is datasets x seeds x backbones x feedback variants; one optimizer run
per cell, with one run spec (the budget) for all. Everything is checked here,
before any model is loaded, so a typo costs seconds, not hours: that includes
every dataset's folder under data_root, by the name CoOp's DATASETS.md gives
it (`caltech-101`, `food-101`, the others as their dataset names), or as
`[folders]` renames it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from scorer_service.coop import COOP_DATASETS, COOP_FOLDERS, check_layout
from scorer_service.datasets import DatasetError

_Value = TypeVar("_Value")

FEEDBACKS = ("positive_only", "positive_negative")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class GridError(ValueError):
    """The grid config is wrong; the message names the key."""


@dataclass(frozen=True)
class Backbone:
    name: str  # a table label and a directory name
    model: str  # hub id or local directory, as the scorer's --model


@dataclass(frozen=True)
class Grid:
    out: Path
    data_root: Path
    datasets: tuple[str, ...]
    folders: dict[str, Path]  # dataset -> its CoOp folder, data_root/caltech-101 etc.
    seeds: tuple[int, ...]
    shots: int
    backbones: tuple[Backbone, ...]
    feedbacks: tuple[str, ...]
    llm_base_url: str
    llm_model: str
    run: dict[str, object]  # `optimizer_service run` flags without the dashes: the budget and search knobs
    scorer: dict[str, object]  # extra scorer flags, e.g. device, dtype


@dataclass(frozen=True)
class GridCell:
    """One (backbone, dataset, seed) of the grid: one index of the Kubernetes Indexed Job."""

    backbone: Backbone
    dataset: str
    seed: int


def cells(grid: Grid) -> list[GridCell]:
    """Every cell, in index order: by backbone, then dataset, then seed."""
    return [GridCell(b, d, s) for b in grid.backbones for d in grid.datasets for s in grid.seeds]


def load_grid(path: Path, out: Path | None = None, check_data: bool = True) -> Grid:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise GridError(f"cannot read grid config {path}: {err}") from err

    def need(key: str, kind: type[_Value]) -> _Value:
        value = raw.get(key)
        if not isinstance(value, kind):
            raise GridError(f"{path}: '{key}' is required ({kind.__name__})")
        return value

    datasets = tuple(need("datasets", list))
    unknown = [d for d in datasets if d not in COOP_DATASETS]
    if not datasets or unknown:
        raise GridError(
            f"{path}: datasets {unknown or '[]'} are not CoOp datasets; use some of {', '.join(COOP_DATASETS)}"
        )
    seeds = tuple(need("seeds", list))
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise GridError(f"{path}: 'seeds' must be a non-empty list of integers")
    backbones = tuple(Backbone(str(b.get("name", "")), str(b.get("model", ""))) for b in need("backbones", list))
    bad = [b.name for b in backbones if not SLUG.match(b.name) or not b.model]
    if not backbones or bad or len({b.name for b in backbones}) != len(backbones):
        raise GridError(
            f"{path}: each [[backbones]] needs a unique name (letters, digits, . _ -) and a model; check {bad}"
        )
    feedbacks = tuple(raw.get("feedback", FEEDBACKS))
    if not feedbacks or set(feedbacks) - set(FEEDBACKS):
        raise GridError(f"{path}: 'feedback' takes {', '.join(FEEDBACKS)}")
    llm = need("llm", dict)
    if not llm.get("base_url") or not llm.get("model"):
        raise GridError(f"{path}: [llm] needs base_url and model (the key comes from OPENAI_API_KEY)")
    run = dict(raw.get("run", {}))
    owned = {"task", "out", "feedback", "seed", "scorer", "state_dir"} & set(run)
    if owned:
        raise GridError(f"{path}: [run] must not set {sorted(owned)}; the grid sets them per cell")
    renamed = dict(raw.get("folders", {}))
    if set(renamed) - set(COOP_DATASETS) or not all(isinstance(v, str) and v for v in renamed.values()):
        raise GridError(f"{path}: [folders] maps CoOp dataset names ({', '.join(COOP_DATASETS)}) to folder names")
    data_root = Path(need("data_root", str))
    folders = {d: data_root / renamed.get(d, COOP_FOLDERS[d]) for d in datasets}
    for dataset, folder in (
        folders.items() if check_data else ()
    ):  # off where the data is elsewhere (a cluster's volume)
        try:
            check_layout(dataset, folder)
        except DatasetError as err:
            raise GridError(f"{path}: {err}") from None
    return Grid(
        out=Path(out or need("out", str)),
        data_root=data_root,
        datasets=datasets,
        folders=folders,
        seeds=seeds,
        shots=int(raw.get("shots", 1)),
        backbones=backbones,
        feedbacks=feedbacks,
        llm_base_url=llm["base_url"],
        llm_model=llm["model"],
        run=run,
        scorer=dict(raw.get("scorer", {})),
    )


def as_flags(options: dict[str, object]) -> list[str]:
    """{"initial_pool_size": 20, "show_accuracies": false} -> ["--initial-pool-size", "20", "--no-show-accuracies"]."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag if value else "--no-" + key.replace("_", "-")]
        else:
            flags += [flag, str(value)]
    return flags
