"""`python -m reproduce` end to end on a miniature grid: two tiny random CLIPs as backbones, CoOp-layout
fixtures, the scripted LLM; then a rerun that resumes the one failed cell and asks nothing else."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys

import pytest

from optimizer_service.baselines import hand_engineered
from reproduce.grid import GridError, load_grid
from testbed.random_clip import build_random_clip
from tests.fixtures import write_coop_dataset
from tests.optimizer.scripted_llm import Fail, Reply, ScriptedLLM
from tests.procs import REPO

DATASETS = ("dtd", "ucf101")  # ucf101: clip-benchmark has no hand-engineered templates for it


def reproduce(config, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reproduce", "--config", str(config), "--log-level", "WARNING"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def test_grid_runs_resumes_and_writes_the_papers_tables(tiny_clip_dir, tmp_path):
    other_clip = build_random_clip(tmp_path / "clip-b", "tiny", seed=1)
    for name in DATASETS:
        write_coop_dataset(tmp_path / "data" / name, name)
    out = tmp_path / "out"
    config = tmp_path / "grid.toml"
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "placeholder", "HOME": str(tmp_path)}
    with ScriptedLLM([Reply("- a {} in the wild"), Fail(500)]) as llm:
        config.write_text(f"""
out = "{out}"
data_root = "{tmp_path / 'data'}"
datasets = {list(DATASETS)}
seeds = [1, 2]
shots = 1
[[backbones]]
name = "tiny-a"
model = "{tiny_clip_dir}"
[[backbones]]
name = "tiny-b"
model = "{other_clip}"
[llm]
base_url = "{llm.url}"
model = "scripted-model"
[run]
initial_pool = "builtin"
initial_pool_size = 3
restarts = 1
resets = 1
iterations = 2
top_k = 1
templates_per_call = 2
conversation = "stateless"
llm_max_attempts = 1
llm_backoff_initial_s = 0.01
""")
        first = reproduce(config, env)
        assert first.returncode == 1, first.stderr[-3000:]  # the first cell's LLM failed: the grid is incomplete
        failed_cell = out / "cells" / "tiny-a" / "dtd" / "seed1" / "positive_only"
        failed = json.loads((failed_cell / "result.json").read_text())
        assert failed["state"] == "RUN_STATE_FAILED" and failed["counters"]["iterations_done"] == 1
        assert not (out / "references").exists()  # references and transfers wait for every cell
        asked = len(llm.seen)
        assert asked == 16 * 2

        second = reproduce(config, env)
        assert second.returncode == 0, second.stderr[-3000:]
        assert len(llm.seen) == asked + 1  # only the failed cell's missing iteration was asked
        resumed = json.loads((failed_cell / "result.json").read_text())
        assert resumed["run_id"] == failed["run_id"] and resumed["state"] == "RUN_STATE_SUCCEEDED"

        third = reproduce(config, env)
        assert third.returncode == 0 and len(llm.seen) == asked + 1  # all done: nothing is run again

    grid = load_grid(config)
    results = list(csv.DictReader((out / "results.csv").open()))
    cells = {(r["backbone"], r["method"], r["dataset"]): r for r in results}
    for backbone in ("tiny-a", "tiny-b"):
        for dataset in DATASETS:
            for method in ("{}", "a photo of a {}.", "positive_only", "positive_negative"):
                assert (backbone, method, dataset) in cells
            tests = [json.loads((out / "cells" / backbone / dataset / f"seed{s}" / "positive_negative" / "result.json")
                                .read_text())["best"][0]["test_accuracy"] for s in grid.seeds]
            row = cells[backbone, "positive_negative", dataset]
            assert float(row["mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-6)
            assert float(row["std"]) == pytest.approx(statistics.stdev(tests), abs=1e-6) and row["seeds"] == "2"
        assert (backbone, "hand-engineered", "dtd") in cells and (backbone, "hand-engineered", "ucf101") not in cells
        references = json.loads((out / "references" / backbone / "dtd.json").read_text())
        assert references["hand-engineered"]["templates"] == list(hand_engineered("dtd"))

    transfers = list(csv.DictReader((out / "transfer.csv").open()))
    pairs = {(r["source"], r["target"]) for r in transfers}
    assert pairs == {("tiny-a", "tiny-a"), ("tiny-a", "tiny-b"), ("tiny-b", "tiny-a"), ("tiny-b", "tiny-b")}
    moved = json.loads((out / "transfers" / "tiny-b" / "dtd.json").read_text())["tiny-a"]
    for seed in ("1", "2"):
        source = json.loads((out / "cells" / "tiny-a" / "dtd" / f"seed{seed}" / "positive_negative" / "result.json").read_text())
        assert moved[seed]["template"] == source["best"][0]["template"]

    markdown = (out / "results.md").read_text()
    assert "## tiny-a" in markdown and "## tiny-b" in markdown and "tiny-a → tiny-b" in markdown
    assert "| method | dtd | ucf101 | Avg |" in markdown
    for row in ("| `{}` |", "| `a photo of a {}.` |", "| hand-engineered (CLIP authors) |",
                "| LLM optimizer, positive only |", "| LLM optimizer, positive + negative |"):
        assert markdown.count(row) == 2
    hand_row = next(line for line in markdown.splitlines() if line.startswith("| hand-engineered"))
    assert "| n/a |" in hand_row and "(1 of 2)" in hand_row
    assert "±" in next(line for line in markdown.splitlines() if line.startswith("| LLM optimizer, positive + negative"))
    assert markdown in third.stdout
    for backbone in ("tiny-a", "tiny-b"):
        for dataset in DATASETS:
            assert (out / "plots" / backbone / f"{dataset}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_errors_name_the_key(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('out = "o"\ndata_root = "d"\ndatasets = ["pets"]\nseeds = [1]\n')
    with pytest.raises(GridError, match=r"datasets \['pets'\] are not CoOp datasets"):
        load_grid(config)
    config.write_text('out = "o"\ndata_root = "d"\ndatasets = ["dtd"]\nseeds = [1]\n'
                      '[[backbones]]\nname = "a/b"\nmodel = "m"\n[llm]\nbase_url = "u"\nmodel = "m"\n')
    with pytest.raises(GridError, match="unique name"):
        load_grid(config)
    config.write_text('out = "o"\ndata_root = "d"\ndatasets = ["dtd"]\nseeds = [1]\n'
                      '[[backbones]]\nname = "a"\nmodel = "m"\n[llm]\nbase_url = "u"\nmodel = "m"\n[run]\nseed = 3\n')
    with pytest.raises(GridError, match=r"\[run\] must not set \['seed'\]"):
        load_grid(config)
