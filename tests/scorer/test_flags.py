"""The scorer's flags and their SCORER_* environment defaults: a value that does not parse is refused naming its
variable, at once and without a traceback."""

from __future__ import annotations

import pytest

from scorer_service.config import parse_config


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse_config(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


MALFORMED = [
    ("SCORER_SHOTS", "three"),
    ("SCORER_TEST_FRACTION", "half"),
    ("SCORER_MAX_CONCURRENT_RPCS", "lots"),
    ("SCORER_GRACE_SECONDS", "30s"),
    ("SCORER_METRICS_PORT", "9101.5"),
]


@pytest.mark.parametrize(("variable", "value"), MALFORMED)
def test_a_malformed_number_in_the_environment_is_refused_naming_its_variable(
    monkeypatch, capsys, tmp_path, variable, value
):
    monkeypatch.setenv(variable, value)
    said = refusal(capsys, ["--task", f"a={tmp_path}"])
    assert f"${variable}={value!r}" in said


def test_a_malformed_task_in_the_environment_is_refused_naming_its_variable(monkeypatch, capsys):
    monkeypatch.setenv("SCORER_TASKS", "no-equals-sign")
    assert "$SCORER_TASKS" in refusal(capsys, [])


def test_well_formed_environment_values_are_parsed_to_their_types(monkeypatch, tmp_path):
    monkeypatch.setenv("SCORER_SHOTS", "4")
    monkeypatch.setenv("SCORER_TEST_FRACTION", "0.25")
    monkeypatch.setenv("SCORER_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("SCORER_TASKS", f"a={tmp_path},b=coop:dtd:{tmp_path}")
    config = parse_config([])
    assert (config.shots, config.test_fraction, config.cache_dir) == (4, 0.25, tmp_path / "c")
    assert [t.task_id for t in config.tasks] == ["a", "b"] and config.tasks[1].coop_dataset == "dtd"
