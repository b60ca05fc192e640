"""The rules of a prompt template, shared by scorer and optimizer.

A template is untrusted text (a client's or an LLM's). It is data, never code:
it is never passed to `str.format`, whose format specs (`{:>999999999}`) and
field access (`{0.__class__...}`) would let the text allocate memory or read
process internals. A valid template holds exactly one `{}` and no other brace;
`fill` replaces that one placeholder by plain substitution.
"""

from __future__ import annotations

import unicodedata

PLACEHOLDER = "{}"
DEFAULT_MAX_TEMPLATE_BYTES = 1024


class Problem(str):
    """Why a template is invalid: the message for a person, and `reason` for a program (the name of the
    scorer proto's TemplateErrorReason without its prefix, e.g. NO_PLACEHOLDER)."""

    reason: str

    def __new__(cls, message: str, reason: str) -> Problem:
        problem = super().__new__(cls, message)
        problem.reason = reason
        return problem


def text_problem(text: str, max_bytes: int = DEFAULT_MAX_TEMPLATE_BYTES, what: str = "prompt") -> Problem | None:
    """Why `text` cannot be a prompt (too large, empty, a control or unassigned character), or None. A class's own
    prompt (a class prompt set's) needs only this; its braces are plain text, never filled."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        return Problem(f"{what} is {size} bytes; the limit is {max_bytes}", "TOO_LARGE")
    if not text.strip():
        return Problem(f"{what} is empty", "EMPTY")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")), None)
    if bad is not None:
        return Problem(f"{what} contains the control or unassigned character U+{ord(bad):04X}", "BAD_CHARACTER")
    return None


def template_problem(template: str, max_bytes: int = DEFAULT_MAX_TEMPLATE_BYTES) -> Problem | None:
    """Returns why `template` is invalid, or None when it is valid."""
    problem = text_problem(template, max_bytes, "template")
    if problem:
        return problem
    count = template.count(PLACEHOLDER)
    if count == 0:
        return Problem("template has no '{}' placeholder for the class name", "NO_PLACEHOLDER")
    if count > 1:
        return Problem(f"template has {count} '{{}}' placeholders; exactly one is allowed", "SEVERAL_PLACEHOLDERS")
    rest = template.replace(PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        return Problem(
            "template has a brace besides its one '{}' (format fields and specs are not allowed)", "STRAY_BRACE"
        )
    return None


def fill(template: str, class_name: str) -> str:
    """Puts the class name in place of the one `{}` of a validated template."""
    return template.replace(PLACEHOLDER, class_name, 1)
