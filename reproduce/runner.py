"""Runs the grid: optimizer runs per cell, then reference rows and transfers per backbone.

Pass 1, per (backbone, seed): one scorer process serves every dataset with
that few-shot seed; each (dataset, feedback) cell is one `optimizer_service
run` into its own directory, whose SQLite state makes a rerun resume an
unfinished run; a cell whose result.json says it succeeded is skipped.
Pass 2, per backbone: the test split does not depend on the seed, so one
scorer scores the reference rows (`{}`, `a photo of a {}.`, CoOp's single
prompt per dataset, the CLIP authors' ensemble) and every other backbone's best P+N
prompts; each answer is written once and then reused.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import structlog

from optimizer_service import cli as optimizer_cli
from optimizer_service.baselines import reference_candidates
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.processes import start_service, stop_process
from reproduce.grid import Backbone, Grid, GridError, as_flags, cells

log = structlog.get_logger(__name__)

TOKEN_ENV = "REPRODUCE_SCORER_TOKEN"
SCORER_ERROR_PREFIX = "scorer: "  # how the scorer's last line names what stopped its start


class ScorerStartError(RuntimeError):
    """A scorer stopped before it served; the message carries its own reason and its log's path."""


SUCCEEDED = "RUN_STATE_SUCCEEDED"
SEARCHED_FEEDBACK = "positive_negative"  # the method whose best prompts are transferred


def cell_dir(grid: Grid, backbone: str, dataset: str, seed: int, feedback: str) -> Path:
    return grid.out / "cells" / backbone / dataset / f"seed{seed}" / feedback


def read_result(directory: Path) -> dict | None:
    path = directory / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_grid(grid: Grid, log_level: str = "INFO") -> int:
    """Runs what is not done yet; returns the number of cells that did not succeed."""
    grid.out.mkdir(parents=True, exist_ok=True)
    os.environ[TOKEN_ENV] = _scorer_token(grid.out / "scorer-tokens.json")
    failed = 0
    for backbone in grid.backbones:
        for seed in grid.seeds:
            pending = [
                (d, f)
                for d in grid.datasets
                for f in grid.feedbacks
                if (read_result(cell_dir(grid, backbone.name, d, seed, f)) or {}).get("state") != SUCCEEDED
            ]
            if not pending:
                continue
            with scorer(grid, backbone, seed) as address:
                for dataset, feedback in pending:
                    failed += not _optimize(grid, address, backbone, dataset, seed, feedback, log_level)
    if failed:
        log.warning(
            "grid_incomplete",
            cells_not_done=failed,
            hint="rerun to resume; references and transfers wait for every cell",
        )
        return failed
    _score_references_and_transfers(grid)
    return failed


def run_cell(grid: Grid, index: int, log_level: str = "INFO") -> int:
    """One index of the Indexed Job: the cell's optimizer runs (one per feedback variant) that are not done yet.

    Its scorer serves only the cell's dataset and keeps its own state, so cells can run at once on one shared volume.
    Returns the number of runs that did not succeed."""
    every = cells(grid)
    if not 0 <= index < len(every):
        raise GridError(f"cell {index} does not exist: the grid has {len(every)} cells, 0..{len(every) - 1}")
    cell = every[index]
    grid.out.mkdir(parents=True, exist_ok=True)
    os.environ[TOKEN_ENV] = _scorer_token(grid.out / "scorer-tokens.json")
    pending = [
        f
        for f in grid.feedbacks
        if (read_result(cell_dir(grid, cell.backbone.name, cell.dataset, cell.seed, f)) or {}).get("state") != SUCCEEDED
    ]
    if not pending:
        return 0
    name = f"{cell.backbone.name}-{cell.dataset}-seed{cell.seed}"
    with scorer(grid, cell.backbone, cell.seed, (cell.dataset,), name) as address:
        return sum(not _optimize(grid, address, cell.backbone, cell.dataset, cell.seed, f, log_level) for f in pending)


def gather(grid: Grid) -> int:
    """After every cell: the reference rows and transfers (what needs every cell); returns the cells not done."""
    os.environ[TOKEN_ENV] = _scorer_token(grid.out / "scorer-tokens.json")
    missing = [
        c
        for c in cells(grid)
        for f in grid.feedbacks
        if (read_result(cell_dir(grid, c.backbone.name, c.dataset, c.seed, f)) or {}).get("state") != SUCCEEDED
    ]
    if missing:
        log.warning(
            "grid_incomplete",
            runs_not_done=len(missing),
            first=f"{missing[0].backbone.name}/{missing[0].dataset}/seed{missing[0].seed}",
            hint="run (or rerun) the cells first",
        )
        return len(missing)
    _score_references_and_transfers(grid)
    return 0


def _score_references_and_transfers(grid: Grid) -> None:
    for target in grid.backbones:
        if _references_and_transfers_done(grid, target):
            continue
        with scorer(grid, target, grid.seeds[0]) as address, grpc.insecure_channel(address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            for dataset in grid.datasets:
                _score_references(grid, stub, target, dataset)
                _score_transfers(grid, stub, target, dataset)


def _scorer_token(path: Path) -> str:
    """The grid's own scorer token (score and test rights), made once and kept beside the results."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then linked into place: of cells starting at once on a shared volume, the first one's token
        # wins.
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        candidate.write_text(
            json.dumps(
                {"tokens": [{"name": "reproduce", "token": secrets.token_urlsafe(32), "rights": ["score", "test"]}]}
            )
        )
        candidate.chmod(0o600)
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    token: str = json.loads(path.read_text())["tokens"][0]["token"]
    return token


@contextmanager
def scorer(
    grid: Grid, backbone: Backbone, seed: int, datasets: tuple[str, ...] | None = None, name: str = ""
) -> Iterator[str]:
    """A scorer process for the datasets (default: all of the grid's) with this backbone and few-shot seed; yields
    its address.

    A `name` gives it a state directory and log of its own."""
    state = grid.out / "scorer-state" / name if name else grid.out / "scorer-state"
    name = name or f"{backbone.name}-seed{seed}"
    args = [
        "scorer_service",
        "--model",
        backbone.model,
        "--shots",
        str(grid.shots),
        "--seed",
        str(seed),
        "--tokens-file",
        str(grid.out / "scorer-tokens.json"),
        "--cache-dir",
        str(grid.out / "cache"),
        "--state-dir",
        str(state),
        *as_flags(grid.scorer),
    ]
    for dataset in datasets or grid.datasets:
        args += ["--task", f"{dataset}=coop:{dataset}:{grid.folders[dataset]}"]
    log_path = grid.out / "logs" / f"scorer-{name}.log"
    log.info("scorer_starting", backbone=backbone.name, seed=seed, log=str(log_path))
    try:
        service = start_service(
            args, log_path, timeout=3600
        )  # a large dataset's image features take a while the first time
    except RuntimeError as err:  # it exited: its last line says why
        lines = log_path.read_text(errors="replace").splitlines()
        reason = next((line for line in reversed(lines) if line.startswith(SCORER_ERROR_PREFIX)), str(err))
        raise ScorerStartError(
            f"the scorer for {backbone.name}, seed {seed}, stopped before serving: "
            f"{reason.removeprefix(SCORER_ERROR_PREFIX)} (log: {log_path})"
        ) from None
    try:
        yield service.address
    finally:
        stop_process(service.process, signal.SIGTERM)


def _optimize(
    grid: Grid, address: str, backbone: Backbone, dataset: str, seed: int, feedback: str, log_level: str
) -> bool:
    """One cell: `optimizer_service run`, which resumes the cell's unfinished run from its state directory."""
    out = cell_dir(grid, backbone.name, dataset, seed, feedback)
    log.info("cell_running", backbone=backbone.name, dataset=dataset, seed=seed, feedback=feedback)
    optimizer_cli.main(
        [
            "run",
            "--scorer",
            address,
            "--scorer-token-env",
            TOKEN_ENV,
            "--llm-base-url",
            grid.llm_base_url,
            "--llm-model",
            grid.llm_model,
            "--task",
            dataset,
            "--out",
            str(out),
            "--feedback",
            feedback,
            "--seed",
            str(seed),
            "--label",
            f"{backbone.name}/{dataset}/seed{seed}/{feedback}",
            "--log-level",
            log_level,
            *as_flags(grid.run),
        ]
    )
    state = (read_result(out) or {}).get("state")
    if state != SUCCEEDED:
        log.warning(
            "cell_not_done",
            backbone=backbone.name,
            dataset=dataset,
            seed=seed,
            feedback=feedback,
            state=state,
            hint="rerun to resume it",
        )
    return state == SUCCEEDED


def references_path(grid: Grid, target: str, dataset: str) -> Path:
    return grid.out / "references" / target / f"{dataset}.json"


def transfers_path(grid: Grid, target: str, dataset: str) -> Path:
    return grid.out / "transfers" / target / f"{dataset}.json"


def _references_done(grid: Grid, target: str, dataset: str) -> bool:
    """Written with every current reference row (an older file lacking one is scored again)."""
    path = references_path(grid, target, dataset)
    return path.is_file() and set(reference_candidates(dataset)) <= set(json.loads(path.read_text()))


def _references_and_transfers_done(grid: Grid, target: Backbone) -> bool:
    return all(
        _references_done(grid, target.name, d) and transfers_path(grid, target.name, d).is_file() for d in grid.datasets
    )


def _test_accuracies(
    stub: scorer_pb2_grpc.ScorerStub, task: str, ensembles: list[tuple[str, ...]]
) -> list[float | None]:
    """Test accuracy of each ensemble (a one-template ensemble is that template); None where the scorer refused it."""
    metadata = (("authorization", f"Bearer {os.environ[TOKEN_ENV]}"),)
    reply = stub.Score(
        scorer_pb2.ScoreRequest(
            task_id=task,
            split=scorer_pb2.SPLIT_TEST,
            ensembles=[scorer_pb2.TemplateEnsemble(templates=e) for e in ensembles],
        ),
        metadata=metadata,
    )
    for ensemble, result in zip(ensembles, reply.ensemble_results, strict=True):
        if result.error:
            log.warning("reference_not_scored", task=task, ensemble=list(ensemble), error=result.error)
    return [None if r.error else r.accuracy for r in reply.ensemble_results]


def _score_references(grid: Grid, stub: scorer_pb2_grpc.ScorerStub, target: Backbone, dataset: str) -> None:
    path = references_path(grid, target.name, dataset)
    if _references_done(grid, target.name, dataset):
        return
    rows = reference_candidates(dataset)
    accuracies = _test_accuracies(stub, dataset, list(rows.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                row: {"templates": list(t), "test_accuracy": a}
                for (row, t), a in zip(rows.items(), accuracies, strict=True)
            },
            indent=2,
        )
        + "\n"
    )


def _score_transfers(grid: Grid, stub: scorer_pb2_grpc.ScorerStub, target: Backbone, dataset: str) -> None:
    """Every other backbone's best P+N template per seed (selected on its own train split), scored on target's test
    split."""
    path = transfers_path(grid, target.name, dataset)
    if path.is_file():
        return
    found: dict[tuple[str, int], str] = {}
    for source in grid.backbones:
        if source == target:
            continue
        for seed in grid.seeds:
            result = read_result(cell_dir(grid, source.name, dataset, seed, SEARCHED_FEEDBACK))
            if result and result.get("state") == SUCCEEDED and result["best"]:
                found[source.name, seed] = result["best"][0]["template"]
    accuracies = _test_accuracies(stub, dataset, [(t,) for t in found.values()]) if found else []
    transfers: dict[str, dict[str, dict[str, Any]]] = {}
    for (source_name, seed), accuracy in zip(found, accuracies, strict=True):
        transfers.setdefault(source_name, {})[str(seed)] = {
            "template": found[source_name, seed],
            "test_accuracy": accuracy,
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(transfers, indent=2) + "\n")
