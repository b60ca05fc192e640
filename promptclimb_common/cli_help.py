"""The argument parser of every command line here: its --help states each option's default.

A user reading `--help` should not have to read the code to learn what an
option is when not given (`--llm-base-url` pointing at a local port surprised
users). argparse's ArgumentDefaultsHelpFormatter says it only for options with
help text, and also for flags whose default is plainly off; this formatter
says it for every option that takes a value and has a default, and keeps
descriptions' line breaks (most descriptions are module docstrings). Subparsers
are of their parent's class, so they get it too.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

_DEFAULT = "(default: %(default)s)"


def states_a_default(action: argparse.Action) -> bool:
    """Whether --help should state the action's default: it has one, and the option takes a value (or is an
    on/off pair, whose default is not obvious)."""
    if action.default is None or action.default is argparse.SUPPRESS:
        return False
    if isinstance(action, argparse.BooleanOptionalAction):
        return True
    if action.option_strings:
        return action.nargs != 0
    return action.nargs in ("?", "*")


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that ends every option's text with its default (see the module's docstring)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or not states_a_default(action):
            return action.help
        return f"{text} {_DEFAULT}".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and states_a_default(action):  # argparse prints no help line for an option without help
            action = copy.copy(action)
            action.help = _DEFAULT
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with DefaultsHelpFormatter unless told otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
