"""The search-quality benchmark's harness, once, on a tiny budget: a real scorer on the trained
testbed model, the optimizer's `run` command, a scripted LLM. Every number must be the scorer's."""

from __future__ import annotations

import json

import pytest

from bench import search_quality
from testbed.fashion_mnist import prepare_testbed_task
from testbed.train import ensure_model
from tests.optimizer.scripted_llm import ScriptedLLM

METHODS = ["random", "pn-chat"]
# The first test trains the testbed model when it is not cached yet (538 s on the 2-core build machine).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("search-quality")
    with ScriptedLLM() as llm:
        code = search_quality.main(
            [
                "--seeds",
                "1",
                "--llm-calls",
                "2",
                "--methods",
                *METHODS,
                "--transfer-to",
                "none",
                "--llm-base-url",
                llm.url,
                "--llm-model",
                "scripted",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    return out


def _rows(markdown: str, table: int = 0) -> dict[str, list[str]]:
    """The rows of the markdown's n-th table, by first cell (its header row left out)."""
    tables = [block for block in markdown.split("\n\n") if block.startswith("| ")]
    rows = [line.strip("|").split("|") for line in tables[table].splitlines() if "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_the_table_has_every_row_and_column(benchmark):
    table = (benchmark / "search_quality.md").read_text()
    assert "not CLIP" in table and "16-shot" in table
    rows = _rows(table)
    expected = [
        *search_quality.BASELINES,
        "best of the initial pool",
        *(search_quality.METHODS[m].name for m in METHODS),
    ]
    assert list(rows) == expected
    assert all(len(cells) == 6 for cells in rows.values())
    for key in METHODS:
        calls = int(rows[search_quality.METHODS[key].name][2])
        assert 1 <= calls <= 2  # the budget holds
    assert (benchmark / "search_quality.png").stat().st_size > 0


def test_every_accuracy_is_what_the_scorer_answers(benchmark):
    graded = {
        key: json.loads((benchmark / "cells" / "fmnist-vit-p7" / "seed1" / key / "graded.json").read_text())
        for key in METHODS
    }
    markdown = (benchmark / "search_quality.md").read_text()
    rows = _rows(markdown)
    data = prepare_testbed_task()
    with search_quality.Scorer(ensure_model(), data, 1, benchmark / "check") as scorer:
        for key, cell in graded.items():
            test, train = (
                scorer.accuracies([[cell["selected"]]], "test")[0],
                scorer.accuracies([[cell["selected"]]], "train")[0],
            )
            assert (cell["test"], cell["train"]) == (test, train)
            assert rows[search_quality.METHODS[key].name][0] == f"{100 * test:.1f} ± 0.0"
            assert cell["curve"][-1][1] == test
            result = json.loads((benchmark / "cells" / "fmnist-vit-p7" / "seed1" / key / "result.json").read_text())
            scored = {r["template"]: r["train_accuracy"] for r in result["trajectory"]}
            assert scored[cell["selected"]] == train == max(scored.values())  # selected on train, never on test
            assert cell["selected"] == result["answer"]["template"] == result["best"][0]["template"]  # no val: train
            assert set(cell["ensemble"]) <= set(scored)  # built from the run's pool
            ensemble_test, ensemble_train = (
                scorer.accuracies([cell["ensemble"]], split)[0] for split in ("test", "train")
            )
            assert (cell["ensemble_test"], cell["ensemble_train"]) == (ensemble_test, ensemble_train)
            ensembles = _rows(markdown, table=1)[search_quality.METHODS[key].name]
            assert ensembles[:2] == [f"{100 * test:.1f} ± 0.0", f"{100 * ensemble_test:.1f} ± 0.0"]
        for name, members in search_quality.BASELINES.items():
            assert rows[name][0] == f"{100 * scorer.accuracies([members], 'test')[0]:.1f} ± 0.0"
