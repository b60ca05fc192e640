"""The search-quality benchmark's harness on a tiny budget: real scorers serving a tiny random CLIP (with a
hand-written world card), the optimizer's `run` command, a scripted LLM. Checks the tables' structure, that every
number is what a fresh Score call answers, and that a rerun resumes from the cells instead of running again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import search_quality
from bench.search_methods import CONTROL, METHODS, Budget
from bench.search_report import MAIN_HEADER
from bench.search_stats import paired_difference, regret, spread
from testbed.random_clip import build_random_clip
from tests.fixtures import CLASSES
from tests.optimizer.scripted_llm import ScriptedLLM

RUN_METHODS = ["random", "authors", "pn-chat"]
SEEDS = [1, 2]
SHOTS = 2
PLANTED = "a studio photo of a {}."
pytestmark = pytest.mark.timeout(600)


def world_card(model_digest: str) -> dict:
    """A hand-written card in the shape testbed.train writes (the numbers are placeholders, in percent)."""
    return {
        "recipe": "tiny-fixture",
        "world": "planted",
        "model_digest": model_digest,
        "class_names": list(CLASSES),
        "cues": ["studio"],
        "planted_optimum": PLANTED,
        "per_class_prompts": {name: f"a photo of a {name}" for name in CLASSES},
        "ceilings": {
            "generic_best": {"template": "a photo of a {}.", "accuracy": 30.0, "list_size": 100},
            "generic": {"`{}`": 25.0, "`a photo of a {}.`": 30.0},
            "cue_ladder": [
                {"cues": [], "template": "a photo of a {}.", "accuracy": 30.0},
                {"cues": ["studio"], "template": PLANTED, "accuracy": 40.0},
            ],
            "planted_optimum": 40.0,
            "per_class_oracle": 45.0,
            "linear_probe_heldout": 50.0,
        },
    }


def carded_model(root: Path, seed: int) -> Path:
    model = build_random_clip(root / f"model-{seed}", "tiny", seed=seed)
    (model / search_quality.WORLD_CARD).write_text(json.dumps(world_card(f"tiny{seed}")))
    return model


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, image_task_dir):
    root = tmp_path_factory.mktemp("search-quality")
    out = root / "out"
    argv = [
        "--model-dir",
        str(carded_model(root, 0)),
        "--transfer-model-dir",
        str(carded_model(root, 1)),
        "--data",
        str(image_task_dir),
        "--shots",
        str(SHOTS),
        "--seeds",
        *map(str, SEEDS),
        "--llm-calls",
        "2",
        "--methods",
        *RUN_METHODS,
        # testbed.whitebox grades on the real Fashion-MNIST test split, which the tiny fixture world is not.
        "--no-white-box",
        "--out",
        str(out),
    ]
    with ScriptedLLM() as llm:
        argv += ["--llm-base-url", llm.url, "--llm-model", "scripted"]
        assert search_quality.main(argv) == 0
        first = (out / "search_quality.json").read_text()
        asked = len(llm.seen)
        # A rerun is a resume: every cell is cached, so the LLM is not asked again and the numbers are the same.
        assert search_quality.main(argv) == 0
        assert len(llm.seen) == asked
        assert (out / "search_quality.json").read_text() == first
    return root, out, image_task_dir


def _tables(markdown: str) -> list[dict[str, list[str]]]:
    """Every markdown table, as rows by first cell (header row left out)."""
    tables = []
    for block in markdown.split("\n\n"):
        lines = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]
        if lines:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
            tables.append({cells[0]: cells[1:] for cells in rows[1:]})
    return tables


def test_the_tables_have_every_row_and_column(bench_run):
    _, out, _ = bench_run
    markdown = (out / "search_quality.md").read_text()
    assert "not CLIP" in markdown and f"{SHOTS}-shot" in markdown and MAIN_HEADER in markdown
    main, ceilings, val, ensembles, transfer = _tables(markdown)
    assert list(val) == [METHODS[m].label for m in RUN_METHODS]  # every run selected on val (the default split)
    assert list(main) == [
        *search_quality.BASELINES,
        "best of the initial pool (train-selected)",
        *(METHODS[m].label for m in RUN_METHODS),
        f"planted optimum `{PLANTED}` (scored here)",
    ]
    assert all(len(cells) == 9 for cells in main.values())
    for method in RUN_METHODS:
        assert 1 <= int(main[METHODS[method].label][6]) <= 2  # the LLM-call cap holds for every method
    assert main[METHODS[CONTROL].label][3].startswith("+0.0 [+0.0, +0.0]")
    assert "| planted optimum `a studio photo of a {}.` | 40.0 |" in markdown  # the card's ceilings, printed
    assert len(ceilings) == 8
    assert list(ensembles) == [METHODS[m].label for m in RUN_METHODS]
    assert list(transfer) == [
        *(METHODS[m].label for m in RUN_METHODS),
        f"planted optimum `{PLANTED}`",
        "`a photo of a {}.`",
    ]
    assert (out / "search_quality.png").stat().st_size > 0


def test_every_number_is_what_the_scorer_answers(bench_run):
    root, out, data = bench_run
    results = json.loads((out / "search_quality.json").read_text())
    graded = results["graded"]
    main, _, _, ensembles, transfer_rows = _tables((out / "search_quality.md").read_text())
    tests: dict[str, list[float]] = {}
    planted_tests = []
    for seed in SEEDS:
        with search_quality.Scorer(root / "model-0", data, seed, SHOTS, root / "check") as scorer:
            planted_tests.append(scorer.templates([PLANTED], "test")[PLANTED])
            for method in RUN_METHODS:
                cell = graded[method][str(seed)]
                (run_dir,) = (out / "cells").glob(f"*/seed{seed}/{method}-*")
                result = json.loads((run_dir / "result.json").read_text())
                scored = list(dict.fromkeys(r["template"] for r in result["trajectory"]))
                test = scorer.templates(scored, "test")
                train = scorer.templates(scored, "train")
                assert cell["answer"] == (result.get("answer") or result["best"][0])["template"]  # read, not re-ranked
                assert (cell["test"], cell["train"]) == (test[cell["answer"]], train[cell["answer"]])
                assert cell["oracle_test"] == max(test.values()) == test[cell["oracle"]]
                assert cell["pool_test"] == test[cell["pool_best"]]
                assert cell["curve"][-1][1] == test[cell["answer"]]
                assert cell["ensemble_test"] == scorer.accuracies([cell["ensemble"]], "test")[0]
                tests.setdefault(method, []).append(test[cell["answer"]])
            for name, members in search_quality.BASELINES.items():
                assert results["fixed"][name][str(seed)]["test"] == scorer.accuracies([members], "test")[0]
    for method in RUN_METHODS:
        row = main[METHODS[method].label]
        assert row[0] == spread(tests[method])
        assert row[3] == str(paired_difference(tests[method], tests[CONTROL]))
        assert row[4] == f"{regret(tests[method], sum(planted_tests) / len(planted_tests)):.1f}"
        assert ensembles[METHODS[method].label][0] == spread(tests[method])
    with search_quality.Scorer(root / "model-1", data, SEEDS[0], SHOTS, root / "check") as scorer:
        for method in RUN_METHODS:
            answers = [graded[method][str(s)]["answer"] for s in SEEDS]
            on_second = scorer.templates(list(dict.fromkeys(answers)), "test")
            assert transfer_rows[METHODS[method].label][1] == spread([on_second[a] for a in answers])


def test_a_changed_budget_or_code_gets_fresh_cells(tmp_path):
    """A cell's directory is named by its key: a different budget or code never reads cached cells."""
    common = {"world": "planted", "model_digest": "tiny0", "code": "a"}
    paths = {
        search_quality.cell_for(tmp_path, "random", 1, common, Budget(2)).path,
        search_quality.cell_for(tmp_path, "random", 1, common, Budget(3)).path,
        search_quality.cell_for(tmp_path, "random", 1, {**common, "code": "b"}, Budget(2)).path,
    }
    assert len(paths) == 3
