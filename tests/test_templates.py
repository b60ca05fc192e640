"""The template rules shared by both services: one `{}`, no other braces, plain substitution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptclimb_common.templates import fill, template_problem


def test_fill_is_plain_substitution():
    assert fill("a photo of a {}.", "cat") == "a photo of a cat."
    assert fill("{} photo", "{0.__class__}") == "{0.__class__} photo"  # class names are never parsed


REFUSED = [
    ("{:>999999999}{}", "STRAY_BRACE"),
    ("{0.__class__.__init__.__globals__}{}", "STRAY_BRACE"),
    ("{}{", "STRAY_BRACE"),
    ("}{}", "STRAY_BRACE"),
    ("{{}}", "STRAY_BRACE"),
    ("{}{}", "SEVERAL_PLACEHOLDERS"),
    ("a photo", "NO_PLACEHOLDER"),
]


@pytest.mark.parametrize(("template", "reason"), REFUSED)
def test_format_syntax_is_refused_with_its_reason(template, reason):
    problem = template_problem(template)
    assert problem is not None and problem.reason == reason


def test_a_valid_template_has_no_problem():
    assert template_problem("a photo of a {}.") is None


@given(st.text(max_size=200))
def test_any_text_gets_a_verdict_and_valid_ones_fill(text):
    problem = template_problem(text)
    if problem is None:
        assert text.count("{}") == 1
        assert fill(text, "X").count("X") >= 1
    else:
        assert problem  # a reason, never an empty string
