"""The template rules shared by both services: one `{}`, no other braces, plain substitution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptclimb_common.templates import TemplateError, fill, template_problem, validate_template


def test_fill_is_plain_substitution():
    assert fill("a photo of a {}.", "cat") == "a photo of a cat."
    assert fill("{} photo", "{0.__class__}") == "{0.__class__} photo"  # class names are never parsed


@pytest.mark.parametrize("template", ["{:>999999999}{}", "{0.__class__.__init__.__globals__}{}", "{}{", "}{}", "{{}}"])
def test_format_syntax_is_refused(template):
    with pytest.raises(TemplateError):
        validate_template(template)


@given(st.text(max_size=200))
def test_any_text_gets_a_verdict_and_valid_ones_fill(text):
    problem = template_problem(text)
    if problem is None:
        assert text.count("{}") == 1
        assert fill(text, "X").count("X") >= 1
    else:
        assert isinstance(problem, str) and problem
