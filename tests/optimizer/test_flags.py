"""The optimizer's flags and their OPTIMIZER_* environment defaults: a value that does not parse is refused naming
its variable (or flag), and no unknown word is taken for false."""

from __future__ import annotations

import pytest

from optimizer_service.cli import main


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """What the command line says when it refuses `argv` (it must exit 2, argparse's usage error)."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


MALFORMED = [
    ("OPTIMIZER_LLM_CONCURRENCY", "four"),
    ("OPTIMIZER_SCORER_DEADLINE_S", "1m"),
    ("OPTIMIZER_PORT", "50052x"),
    ("OPTIMIZER_MAX_ACTIVE_RUNS", ""),
]


@pytest.mark.parametrize(("variable", "value"), MALFORMED)
def test_a_malformed_number_in_the_environment_is_refused_naming_its_variable(monkeypatch, capsys, variable, value):
    monkeypatch.setenv(variable, value)
    said = refusal(capsys, ["serve"])
    assert f"${variable}={value!r}" in said


@pytest.mark.parametrize("variable", ["OPTIMIZER_LLM_GRAMMAR", "OPTIMIZER_LLM_CACHE", "OPTIMIZER_SHOW_ACCURACIES"])
def test_an_unknown_boolean_word_in_the_environment_is_refused_not_taken_for_false(monkeypatch, capsys, variable):
    monkeypatch.setenv(variable, "ja")
    said = refusal(capsys, ["run", "--task", "t", "--out", "/tmp/unused"])
    assert f"${variable}='ja'" in said and "bool" in said


def test_an_unknown_boolean_word_on_the_command_line_is_refused(capsys):
    said = refusal(capsys, ["serve", "--llm-grammar", "enabled"])
    assert "--llm-grammar" in said and "'enabled'" in said


@pytest.mark.parametrize(
    ("word", "meaning"),
    [
        ("true", True),
        ("Yes", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("NO", False),
        ("0", False),
        ("off", False),
    ],
)
def test_the_boolean_words_still_mean_what_they_meant(monkeypatch, word, meaning):
    import argparse

    from optimizer_service.config import add_serve_args

    monkeypatch.setenv("OPTIMIZER_LLM_CACHE", word)
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    assert parser.parse_args([]).llm_cache is meaning
    assert parser.parse_args(["--llm-grammar", word]).llm_grammar is meaning


def test_a_malformed_price_in_the_environment_is_refused_naming_its_variable(monkeypatch, capsys):
    monkeypatch.setenv("OPTIMIZER_LLM_PRICE", "cheap")
    assert "$OPTIMIZER_LLM_PRICE='cheap'" in refusal(capsys, ["serve"])


def test_the_shares_are_flags_with_safe_defaults_and_refuse_a_negative(monkeypatch, capsys):
    import argparse

    from optimizer_service.config import add_serve_args, serve_config

    monkeypatch.setenv("OPENAI_API_KEY", "x")
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    config = serve_config(parser, parser.parse_args([]))
    assert (config.max_concurrent_rpcs, config.max_rpcs_per_owner, config.max_streams_per_owner) == (256, 64, 16)
    assert (config.shares.max_runs, config.shares.max_scored_templates) == (20, 20_000)
    assert config.limits.max_scored_templates == 2000 and config.metrics_caller_labels is True
    monkeypatch.setenv("OPTIMIZER_MAX_STREAMS_PER_OWNER", "3")
    monkeypatch.setenv("OPTIMIZER_METRICS_CALLER_LABELS", "false")
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    config = serve_config(parser, parser.parse_args(["--owner-max-scored-templates", "0", "--metrics-host", "::1"]))
    assert config.share_limits.streams_per_owner == 3 and config.shares.max_scored_templates == 0
    assert config.metrics_caller_labels is False and config.metrics_host == "::1"
    for flag in ("--max-rpcs-per-owner", "--max-runs-per-owner", "--run-max-scored-templates"):
        assert flag in refusal(capsys, ["serve", flag, "-1"])
