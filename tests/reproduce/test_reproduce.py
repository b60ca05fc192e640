"""`python -m reproduce` (what `make reproduce` runs) end to end on miniature grids: tiny random CLIPs as
backbones, datasets in CoOp's folders and layouts (unsorted split files, hidden files), the scripted LLM;
a rerun that resumes the one failed cell and asks nothing else; a SIGKILL that leaves no scorer behind."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from optimizer_service.baselines import coop_prompt, hand_engineered
from promptclimb_common.port_file import BoundPorts
from promptclimb_common.processes import as_child
from reproduce.__main__ import main as reproduce_main
from reproduce.grid import GridError, load_grid
from testbed.random_clip import build_random_clip
from tests.fixtures import write_coop_data_root
from tests.optimizer.scripted_llm import WORDS, Delay, Fail, Reply, ScriptedLLM
from tests.procs import REPO

DATASETS = ("dtd", "ucf101")  # ucf101: clip-benchmark has no hand-engineered templates for it
SMALL_RUN = """
[run]
initial_pool = "builtin"
initial_pool_size = 3
restarts = 1
resets = 1
iterations = 1
top_k = 1
templates_per_call = 2
conversation = "stateless"
"""


def reproduce(config, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        **as_child([sys.executable, "-m", "reproduce", "--config", str(config), "--log-level", "WARNING"]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def grid_env(tmp_path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "placeholder", "HOME": str(tmp_path)}


def one_backbone_grid(path, out, data_root, datasets, model, llm_url) -> None:
    path.write_text(f"""
out = "{out}"
data_root = "{data_root}"
datasets = {list(datasets)}
seeds = [1]
feedback = ["positive_negative"]
[[backbones]]
name = "tiny"
model = "{model}"
[llm]
base_url = "{llm_url}"
model = "scripted-model"
{SMALL_RUN}""")


def test_grid_runs_resumes_and_writes_the_papers_tables(tiny_clip_dir, tmp_path):
    other_clip = build_random_clip(tmp_path / "clip-b", "tiny", seed=1)
    write_coop_data_root(tmp_path / "data", DATASETS)
    out = tmp_path / "out"
    config = tmp_path / "grid.toml"
    env = grid_env(tmp_path)
    with ScriptedLLM([Reply("- a {} in the wild"), Fail(500)]) as llm:
        config.write_text(f"""
out = "{out}"
data_root = "{tmp_path / "data"}"
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
            for method in ("{}", "a photo of a {}.", "coop_single_prompt", "positive_only", "positive_negative"):
                assert (backbone, method, dataset) in cells
            tests = [
                json.loads(
                    (out / "cells" / backbone / dataset / f"seed{s}" / "positive_negative" / "result.json").read_text()
                )["best"][0]["test_accuracy"]
                for s in grid.seeds
            ]
            row = cells[backbone, "positive_negative", dataset]
            assert float(row["mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-6)
            assert float(row["std"]) == pytest.approx(statistics.stdev(tests), abs=1e-6) and row["seeds"] == "2"
        assert (backbone, "clip_authors_ensemble", "dtd") in cells and (
            backbone,
            "clip_authors_ensemble",
            "ucf101",
        ) not in cells
        references = json.loads((out / "references" / backbone / "dtd.json").read_text())
        assert references["clip_authors_ensemble"]["templates"] == list(hand_engineered("dtd"))

    transfers = list(csv.DictReader((out / "transfer.csv").open()))
    pairs = {(r["source"], r["target"]) for r in transfers}
    assert pairs == {("tiny-a", "tiny-a"), ("tiny-a", "tiny-b"), ("tiny-b", "tiny-a"), ("tiny-b", "tiny-b")}
    moved = json.loads((out / "transfers" / "tiny-b" / "dtd.json").read_text())["tiny-a"]
    for seed in ("1", "2"):
        source = json.loads(
            (out / "cells" / "tiny-a" / "dtd" / f"seed{seed}" / "positive_negative" / "result.json").read_text()
        )
        assert moved[seed]["template"] == source["best"][0]["template"]

    markdown = (out / "results.md").read_text()
    assert "## tiny-a" in markdown and "## tiny-b" in markdown and "tiny-a → tiny-b" in markdown
    assert "| method | dtd | ucf101 | Avg |" in markdown
    for row_start in (
        "| `{}` |",
        "| `a photo of a {}.` |",
        "| CLIP authors' ensemble |",
        "| CoOp's single prompt per dataset |",
        "| LLM optimizer, positive only |",
        "| LLM optimizer, positive + negative |",
    ):
        assert markdown.count(row_start) == 2
    hand_row = next(line for line in markdown.splitlines() if line.startswith("| CLIP authors' ensemble"))
    assert "| n/a |" in hand_row and "(1 of 2)" in hand_row
    assert "±" in next(
        line for line in markdown.splitlines() if line.startswith("| LLM optimizer, positive + negative")
    )
    assert markdown in third.stdout
    for backbone in ("tiny-a", "tiny-b"):
        for dataset in DATASETS:
            assert (out / "plots" / backbone / f"{dataset}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_errors_name_the_key(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('out = "o"\ndata_root = "d"\ndatasets = ["pets"]\nseeds = [1]\n')
    with pytest.raises(GridError, match=r"datasets \['pets'\] are not CoOp datasets"):
        load_grid(config)
    config.write_text(
        'out = "o"\ndata_root = "d"\ndatasets = ["dtd"]\nseeds = [1]\n'
        '[[backbones]]\nname = "a/b"\nmodel = "m"\n[llm]\nbase_url = "u"\nmodel = "m"\n'
    )
    with pytest.raises(GridError, match="unique name"):
        load_grid(config)
    config.write_text(
        'out = "o"\ndata_root = "d"\ndatasets = ["dtd"]\nseeds = [1]\n'
        '[[backbones]]\nname = "a"\nmodel = "m"\n[llm]\nbase_url = "u"\nmodel = "m"\n[run]\nseed = 3\n'
    )
    with pytest.raises(GridError, match=r"\[run\] must not set \['seed'\]"):
        load_grid(config)


def test_grid_reads_coops_folders_as_they_are_and_scores_both_baselines(tiny_clip_dir, tmp_path):
    datasets = ("caltech101", "food101", "imagenet", "oxford_pets")
    data = write_coop_data_root(tmp_path / "DATA", datasets)
    assert sorted(p.name for p in data.iterdir()) == ["caltech-101", "food-101", "imagenet", "oxford_pets"]
    out, config = tmp_path / "out", tmp_path / "grid.toml"
    with ScriptedLLM() as llm:
        one_backbone_grid(config, out, data, datasets, tiny_clip_dir, llm.url)
        done = reproduce(config, grid_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]

    rows = {(r["method"], r["dataset"]): r for r in csv.DictReader((out / "results.csv").open())}
    markdown = (out / "results.md").read_text().splitlines()
    header = "| method | caltech101 | food101 | imagenet | oxford_pets | Avg |"
    assert header in markdown
    for key, label in (
        ("coop_single_prompt", "CoOp's single prompt per dataset"),
        ("clip_authors_ensemble", "CLIP authors' ensemble"),
    ):
        line = next(line for line in markdown if line.startswith(f"| {label} |"))
        accuracies = []
        for index, dataset in enumerate(datasets):
            scored = json.loads((out / "references" / "tiny" / f"{dataset}.json").read_text())[key]
            assert float(rows[key, dataset]["mean"]) == pytest.approx(scored["test_accuracy"], abs=1e-6)
            assert line.split(" | ")[index + 1] == f"{100 * scored['test_accuracy']:.1f}"
            accuracies.append(scored["test_accuracy"])
            expected = (coop_prompt(dataset),) if key == "coop_single_prompt" else hand_engineered(dataset)
            assert tuple(scored["templates"]) == expected
        assert line.endswith(f"| {100 * statistics.fmean(accuracies):.1f} |")
    assert coop_prompt("oxford_pets") == "a photo of a {}, a type of pet."
    assert "oxford_pets `a photo of a {}, a type of pet.`" in "\n".join(markdown)
    assert "imagenet 80" in "\n".join(markdown)  # the ensemble's size per dataset is stated
    for dataset in datasets:
        assert rows["positive_negative", dataset]["seeds"] == "1"


def test_a_missing_dataset_folder_is_one_line_before_anything_starts(tiny_clip_dir, tmp_path):
    data = write_coop_data_root(tmp_path / "DATA", ("caltech101",))
    (data / "food101").mkdir()  # not CoOp's name for it: food-101
    out, config = tmp_path / "out", tmp_path / "grid.toml"
    one_backbone_grid(config, out, data, ("caltech101", "food101"), tiny_clip_dir, "http://127.0.0.1:9/v1")
    missing = reproduce(config, grid_env(tmp_path))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert f"{data / 'food-101'} does not exist" in missing.stderr and "DATASETS.md" in missing.stderr
    assert not (out / "logs").exists()  # no scorer was started

    (data / "food101").rename(data / "food-101")  # the right name, but still empty
    incomplete = reproduce(config, grid_env(tmp_path))
    assert incomplete.returncode == 2 and incomplete.stderr.count("\n") == 1, incomplete.stderr
    assert "split_zhou_Food101.json is missing" in incomplete.stderr

    write_coop_data_root(data, ("food101",))
    next((data / "food-101" / "images").rglob("test_00.jpg")).unlink()  # found only when the scorer reads the split
    failed = reproduce(config, grid_env(tmp_path))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert "the scorer for tiny, seed 1, stopped before serving: " in failed.stderr
    assert "1 test image(s) missing" in failed.stderr and "scorer-tiny-seed1.log" in failed.stderr


def _proc(pid: int | str, name: str) -> bytes:
    """/proc/<pid>/<name>: raises OSError once the process is gone."""
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = _proc(entry, "stat")
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return _proc(pid, "stat").rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _serves(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)  # type: ignore[attr-defined]  # typeshed's HealthStub declares no methods
            return True
        except grpc.RpcError:
            return False


def test_sigkill_of_reproduce_leaves_no_child_behind(tiny_clip_dir, tmp_path):
    data = write_coop_data_root(tmp_path / "DATA", ("dtd",))
    out, config = tmp_path / "out", tmp_path / "grid.toml"
    with ScriptedLLM([Delay(120, Reply("- a {} in the wild"))]) as llm:
        one_backbone_grid(config, out, data, ("dtd",), tiny_clip_dir, llm.url)
        grid = subprocess.Popen(
            [sys.executable, "-m", "reproduce", "--config", str(config), "--log-level", "WARNING"],
            cwd=REPO,
            env=grid_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        children = []
        try:
            deadline = time.monotonic() + 120
            while not llm.seen:  # the scorer has scored the initial pool; the first LLM call hangs
                assert grid.poll() is None and time.monotonic() < deadline, "reproduce never reached its first LLM call"
                time.sleep(0.2)
            children = _children(grid.pid)
            port_files = [
                Path(a.split(b"\0")[0].decode())
                for pid in children
                for a in _proc(pid, "cmdline").split(b"--port-file\0")[1:]
            ]
            bound = [BoundPorts.read(path) for path in port_files]
            ports = [b.grpc for b in bound if b is not None]
            assert children and len(ports) == 1 and _serves(ports[0])
            grid.send_signal(signal.SIGKILL)
            grid.wait()
            deadline = time.monotonic() + 15
            while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [pid for pid in children if _alive(pid)], "a child of reproduce outlived it"
            assert not _serves(ports[0])
        finally:  # whatever of ours is left, should the test fail
            if grid.poll() is None:
                grid.kill()
                grid.wait()
            for pid in children:
                if _alive(pid) and b"scorer_service" in _proc(pid, "cmdline"):
                    os.kill(pid, signal.SIGKILL)


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


def answer_by_content(body: dict) -> Reply:
    """Templates that depend only on what was asked, so the order in which cells run changes nothing."""
    asked = re.search(r"Write (\d+)", body["messages"][-1]["content"])
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()
    return Reply(
        "\n".join(
            f"- a {WORDS[int(digest[i], 16) % len(WORDS)]} photo {digest[:8]}-{i} of a {{}}."
            for i in range(int(asked.group(1)) if asked else 1)
        )
    )


def test_every_cell_by_index_then_gather_gives_the_tables_of_one_run(tiny_clip_dir, tmp_path, monkeypatch, capsys):
    other_clip = build_random_clip(tmp_path / "clip-b", "tiny", seed=1)
    write_coop_data_root(tmp_path / "data", DATASETS)
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    with ScriptedLLM(default=answer_by_content) as llm:
        whole = miniature_grid(
            tmp_path / "whole.toml", tmp_path / "whole", tmp_path / "data", tiny_clip_dir, other_clip, llm.url
        )
        spread = miniature_grid(
            tmp_path / "spread.toml", tmp_path / "spread", tmp_path / "data", tiny_clip_dir, other_clip, llm.url
        )
        assert reproduce_main(["--config", str(whole), "--log-level", "WARNING"]) == 0

        capsys.readouterr()
        assert reproduce_main(["--config", str(spread), "--list-cells"]) == 0
        listed = capsys.readouterr().out.splitlines()
        assert len(listed) == 2 * 2 * 2 and listed[0] == "0\ttiny-a\tdtd\t1" and listed[-1] == "7\ttiny-b\tucf101\t2"
        assert reproduce_main(["--config", str(spread), "--gather", "--log-level", "WARNING"]) == 1  # no cell has run
        assert not (tmp_path / "spread" / "references").exists()
        assert reproduce_main(["--config", str(spread), "--cell", "8"]) == 2
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
