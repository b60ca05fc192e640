"""Turns an LLM's free-text reply into candidate templates.

Chat models rarely answer in exactly the requested format. They add bullets or
numbering, wrap lines in quotes or markdown, copy input lines together with
their accuracies, write a class name (or `{class}`) where `{}` belongs, and
some reason inside <think> blocks first. The parser undoes those habits. It
then judges each line with the shared template rules, so the optimizer accepts
exactly what the scorer accepts. The reply is only ever treated as data: no
line is passed to `str.format`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from optimizer_service.pool import template_key
from promptclimb_common.templates import PLACEHOLDER, template_problem

_THINKING = re.compile(r"<think>.*?(</think>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^\s*```")
# One or more markers: models nest them ("1. - a photo of a {}").
_LIST_MARKER = re.compile(
    r"""^\s*(?:(?:
        [-*+\u2022\u00b7\u2013\u2014>]+          # - * + bullet, middle dot, dashes, quote marker
      | \(?\d{1,3}\s*[.):\]](?!\d)               # 1.  1)  (1)  1:  1]  (not 2.5)
      | \(?[a-z][)\]]                             # a)  (b)
      | \#{1,6}                                  # markdown heading
      | (?:template|prompt|option|candidate)\s*\#?\s*\d{0,3}\s*[:.)-]  # Template 2:
    )\s*)+""",
    re.IGNORECASE | re.VERBOSE,
)
_EMPHASIS = re.compile(r"(\*\*|__|`)")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`"), ("\u00ab", "\u00bb"))
_NUMBER = r"(?<![\w.,])(?:\d{1,3}(?:[.,]\d+)?\s*%|[01]?\.\d+|1\.0+)"  # a whole number, never the tail of "2.5"
_TRAILING_SCORE = re.compile(
    rf"""\s*(?:[-\u2013\u2014:|,=]|->|\u2192|=>)?\s*        # separator
        [(\[]?\s*(?:(?:train\s+)?(?:accuracy|acc|score)\s*(?:is|of|now)?\s*[:=]?\s*)?
        (?:{_NUMBER})\s*[)\]]?\s*\.?\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# How chat models open or close their answer; such a line is prose, not a template, unless it is a list item.
_PROSE_OPENING = re.compile(
    r"^(?:here(?:'s|\s+is|\s+are)|sure|certainly|of\s+course|okay|absolutely|i(?:'m|'ve|'ll|\s+am|\s+have|\s+hope|\s+think"
    r"|\s+suggest|\s+will)|these\s+(?:templates|prompts|are)|the\s+following|note|let\s+me|below)\b",
    re.IGNORECASE,
)
# Spellings of "the class goes here" that models use instead of {}.
_PLACEHOLDER_SPELLINGS = re.compile(
    r"\{\s*(?:0|class(?:[ _-]?name)?|label|object|category|name|x|cls)?\s*\}"
    r"|<\s*(?:class(?:[ _-]?name)?|label|category)\s*>"
    r"|\[\s*(?:class(?:[ _-]?name)?|label|category)\s*\]",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rejected:
    line: str
    reason: str


@dataclass(frozen=True)
class ParsedReply:
    """Valid templates in reply order (no repeats), and the lines that looked like templates but were not."""

    templates: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def parse_templates(reply: str, class_names: Sequence[str] = ()) -> ParsedReply:
    """Every template the reply proposes, cleaned; prose lines are ignored, broken candidates rejected."""
    class_pattern = _class_name_pattern(class_names)
    templates: list[str] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for raw in _THINKING.sub("", reply).splitlines():
        if _FENCE.match(raw) or not raw.strip():
            continue
        candidate, looks_like_template = _clean_line(raw, class_pattern)
        if not looks_like_template:
            continue
        problem = template_problem(candidate)
        if problem:
            rejected.append(Rejected(raw.strip(), problem))
            continue
        key = template_key(candidate)
        if key not in seen:
            seen.add(key)
            templates.append(candidate)
    return ParsedReply(templates, rejected)


def _clean_line(raw: str, class_pattern: re.Pattern | None) -> tuple[str, bool]:
    """Strips the decorations models add; says whether the line proposes a template at all."""
    line = raw.strip()
    marked = bool(_LIST_MARKER.match(line))
    line = _LIST_MARKER.sub("", line, count=1)
    line = _EMPHASIS.sub("", line).strip()
    if line.endswith(":") or (not marked and _PROSE_OPENING.match(line)):
        return line, False  # "Here are templates for the Bag class:" introduces templates, it is not one
    line, quoted = _unquote(line)
    if quoted:  # models quote their own bullets: - "- a photo of a {}"
        line = _LIST_MARKER.sub("", line, count=1)
    line = _TRAILING_SCORE.sub("", line).strip()
    line, quoted_late = _unquote(line)
    line = _PLACEHOLDER_SPELLINGS.sub(PLACEHOLDER, line)
    named_class = False
    if "{" not in line and "}" not in line and class_pattern is not None:
        line, named_class = _class_name_to_placeholder(line, class_pattern)
    line = " ".join(line.split())
    has_braces = "{" in line or "}" in line
    return line, has_braces or named_class or marked or quoted or quoted_late


def _unquote(line: str) -> tuple[str, bool]:
    for opening, closing in _QUOTES:
        if len(line) >= 2 and line[0] == opening and line[-1] == closing:
            return line[1:-1].strip(), True
    return line, False


def _class_name_pattern(class_names: Sequence[str]) -> re.Pattern | None:
    names = sorted({n.strip() for n in class_names if n.strip()}, key=len, reverse=True)  # longest first
    if not names:
        return None
    alternatives = "|".join(r"\s+".join(map(re.escape, name.split())) for name in names)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _class_name_to_placeholder(line: str, class_pattern: re.Pattern) -> tuple[str, bool]:
    """A line that names exactly one class means 'the class goes here'; two names are left alone (invalid)."""
    matches = list(class_pattern.finditer(line))
    if len(matches) != 1:
        return line, bool(matches)
    match = matches[0]
    return line[: match.start()] + PLACEHOLDER + line[match.end() :], True
