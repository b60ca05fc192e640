"""List pagination as the AIPs define it (AIP-158): page_size, opaque page tokens, next_page_token.

A token is the list's position (the sort key of the last item sent) plus the
request's filter, so a page never repeats or skips an item when others are
added, and a token is refused when reused with another filter. It is opaque to
callers (URL-safe base64 of JSON), not a secret: it names nothing they could
not list.
"""

from __future__ import annotations

import base64
import binascii
import json


class PageError(ValueError):
    """A list request's page_size, page_token or filter the caller must fix; the message says how, `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def page_size(requested: int, default: int, maximum: int) -> int:
    """0 takes the default; above the maximum is coerced to it (AIP-158); negative is refused."""
    if requested < 0:
        raise PageError("page_size", f"page_size must be >= 0 (0 takes the default {default}), got {requested}")
    return min(requested or default, maximum)


def encode_token(position: list, filter_: object = None) -> str:
    return base64.urlsafe_b64encode(json.dumps({"p": position, "f": filter_}).encode()).decode()


def decode_token(token: str, shape: tuple[type | tuple[type, ...], ...], filter_: object = None) -> list | None:
    """The position a token stands for, its items of the types in `shape` (None for the empty token: the first page)."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        position, token_filter = data["p"], data["f"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        position, token_filter = None, filter_
    if not (
        isinstance(position, list)
        and len(position) == len(shape)
        and all(
            isinstance(item, kind) and not isinstance(item, bool) for item, kind in zip(position, shape, strict=True)
        )
    ):
        raise PageError(
            "page_token",
            "page_token is not one this service issued; pass next_page_token unchanged, or empty for the first page",
        )
    if token_filter != filter_:
        raise PageError(
            "page_token", "page_token was issued for another filter; list again from the first page with this filter"
        )
    return position
