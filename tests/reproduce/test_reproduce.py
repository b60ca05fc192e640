"""`python -m reproduce` end to end on a miniature grid: two tiny random CLIPs as backbones, CoOp-layout
fixtures, the scripted LLM; then a rerun that resumes the one failed cell and asks nothing else."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from optimizer_service.baselines import hand_engineered
from reproduce.__main__ import main as reproduce_main
from reproduce.grid import GridError, load_grid
from testbed.random_clip import build_random_clip
from tests.fixtures import write_coop_dataset
from tests.optimizer.scripted_llm import WORDS, Fail, Reply, ScriptedLLM
from tests.procs import REPO

DATASETS = ("dtd", "ucf101")  # ucf101: clip-benchmark has no hand-engineered templates for it


def reproduce(config, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reproduce", "--config", str(config), "--log-level", "WARNING"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def miniature_grid(config: Path, out: Path, data: Path, clip_a: Path, clip_b: Path, llm_url: str) -> Path:
    """The grid of these tests: two tiny CLIPs, two datasets, two seeds, a short search."""
    config.write_text(f"""
out = "{out}"
data_root = "{data}"
datasets = {list(DATASETS)}
seeds = [1, 2]
shots = 1
[[backbones]]
name = "tiny-a"
model = "{clip_a}"
[[backbones]]
name = "tiny-b"
model = "{clip_b}"
[llm]
base_url = "{llm_url}"
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
    return config


def test_grid_runs_resumes_and_writes_the_papers_tables(tiny_clip_dir, tmp_path):
    other_clip = build_random_clip(tmp_path / "clip-b", "tiny", seed=1)
    for name in DATASETS:
        write_coop_dataset(tmp_path / "data" / name, name)
    out = tmp_path / "out"
    config = tmp_path / "grid.toml"
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "placeholder", "HOME": str(tmp_path)}
    with ScriptedLLM([Reply("- a {} in the wild"), Fail(500)]) as llm:
        miniature_grid(config, out, tmp_path / "data", tiny_clip_dir, other_clip, llm.url)
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


def answer_by_content(body: dict) -> Reply:
    """Templates that depend only on what was asked, so the order in which cells run changes nothing."""
    asked = re.search(r"Write (\d+)", body["messages"][-1]["content"])
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return Reply("\n".join(f"- a {WORDS[int(digest[i], 16) % len(WORDS)]} photo {digest[:8]}-{i} of a {{}}."
                           for i in range(int(asked.group(1)) if asked else 1)))


def test_every_cell_by_index_then_gather_gives_the_tables_of_one_run(tiny_clip_dir, tmp_path, monkeypatch, capsys):
    other_clip = build_random_clip(tmp_path / "clip-b", "tiny", seed=1)
    for name in DATASETS:
        write_coop_dataset(tmp_path / "data" / name, name)
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    with ScriptedLLM(default=answer_by_content) as llm:
        whole = miniature_grid(tmp_path / "whole.toml", tmp_path / "whole", tmp_path / "data", tiny_clip_dir, other_clip, llm.url)
        spread = miniature_grid(tmp_path / "spread.toml", tmp_path / "spread", tmp_path / "data", tiny_clip_dir, other_clip, llm.url)
        assert reproduce_main(["--config", str(whole), "--log-level", "WARNING"]) == 0

        capsys.readouterr()
        assert reproduce_main(["--config", str(spread), "--list-cells"]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert len(listed) == 2 * 2 * 2 and listed[0] == "0\ttiny-a\tdtd\t1" and listed[-1] == "7\ttiny-b\tucf101\t2"
        assert reproduce_main(["--config", str(spread), "--gather", "--log-level", "WARNING"]) == 1  # no cell has run
        assert not (tmp_path / "spread" / "references").exists()
        with pytest.raises(SystemExit):
            reproduce_main(["--config", str(spread), "--cell", "8"])
        assert "cell 8 does not exist: the grid has 8 cells, 0..7" in capsys.readouterr().err
        for index in reversed(range(len(listed))):  # any order: each index is its own Job pod
            assert reproduce_main(["--config", str(spread), "--cell", str(index), "--log-level", "WARNING"]) == 0
            _, backbone, dataset, seed = listed[index].split("\t")
            for feedback in ("positive_only", "positive_negative"):
                result = tmp_path / "spread" / "cells" / backbone / dataset / f"seed{seed}" / feedback / "result.json"
                assert json.loads(result.read_text())["state"] == "RUN_STATE_SUCCEEDED"
        assert reproduce_main(["--config", str(spread), "--gather", "--log-level", "WARNING"]) == 0

    for name in ("results.csv", "transfer.csv", "results.md"):
        ours, theirs = (tmp_path / "spread" / name).read_text(), (tmp_path / "whole" / name).read_text()
        assert ours == theirs, name
    rows = list(csv.DictReader((tmp_path / "spread" / "results.csv").open()))
    assert {r["method"] for r in rows} >= {"{}", "positive_only", "positive_negative"} and len(rows) > 8
