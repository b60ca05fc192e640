"""Every command line's --help states each option's default.

Each CLI is run as `python -m` runs it, in this process, up to the moment it parses
its arguments: the parser is taken there, so no service starts and nothing is
parsed. Its help, and each subcommand's, must state the default of every option
that takes a value and has one.
"""

from __future__ import annotations

import argparse
import runpy
import sys

import pytest

from tests.procs import REPO

MODULES = [
    "promptclimb",
    "scorer_service",
    "optimizer_service",
    "demo",
    "demo.embedded_llm",
    "reproduce",
    "testbed.train",
    "testbed.random_clip",
    "testbed.fashion_mnist",
    "bench.search_quality",
    "bench.search_pooled",
    "bench.text_encoder",
    "bench.grpc_load",
    "bench.reliability",
    "bench.chat_prompt_size",
]
SCRIPTS = ["deploy/check.py", "deploy/image_check.py"]


class Parsed(BaseException):
    """Raised where the CLI would parse its arguments, carrying its parser."""


def parser_of(monkeypatch, run) -> argparse.ArgumentParser:
    def capture(self, args=None, namespace=None):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(Parsed) as caught:
        run()
    parser = caught.value.args[0]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def with_subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += with_subcommands(sub)
    return found


def takes_a_value_with_a_default(action: argparse.Action) -> bool:
    if action.default is None or action.default is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
        return False
    return action.nargs != 0 if action.option_strings else action.nargs in ("?", "*")


def missing_defaults(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for each in with_subcommands(parser):
        for action in each._actions:
            if takes_a_value_with_a_default(action):
                shown = each._get_formatter()._format_action(action)
                if "default" not in shown or str(action.default) not in " ".join(shown.split()):
                    missing.append(f"{each.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("module", MODULES)
def test_a_modules_help_states_every_default(monkeypatch, module):
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(sys, "argv", [module])
    parser = parser_of(monkeypatch, lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))
    assert missing_defaults(parser) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_scripts_help_states_every_default(monkeypatch, script):
    monkeypatch.setenv("COLUMNS", "400")
    path = REPO / script
    monkeypatch.setattr(sys, "argv", [str(path)])
    monkeypatch.syspath_prepend(str(path.parent))
    parser = parser_of(monkeypatch, lambda: runpy.run_path(str(path), run_name="__main__"))
    assert missing_defaults(parser) == []


def test_the_client_commands_help_shows_where_it_connects(capsys):
    from promptclimb.cli import main

    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "HOST:PORT of the scorer (default: 127.0.0.1:50051)" in help_text
    assert "(default: train)" in help_text
