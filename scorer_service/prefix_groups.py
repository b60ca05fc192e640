"""Which prompts may share the encoding of their template's prefix (see prefix_sharing).

All class prompts of a template begin with the template's text before `{}`. They
share its hidden states only when its tokens are exactly their first tokens:
BPE may merge across the class-name boundary, as in "photo-{}".
"""

from __future__ import annotations

from collections.abc import Sequence

from scorer_service.tokenizer import PromptTokenizer

PrefixKey = tuple[int, ...]


def prefix_groups(
    tokenizer: PromptTokenizer, ids: Sequence[Sequence[int]], prefixes: Sequence[str | None]
) -> dict[PrefixKey | None, list[int]]:
    """Prompt indices by the token ids of their shared prefix (None: not shareable).

    `prefixes[i]` is prompt i's text before the class name, if known. A group of
    one shares nothing, and a prefix of the start token alone saves nothing.
    """
    prefix_ids = {text: tokenizer.prefix_ids(text) for text in set(prefixes) if text is not None}
    groups: dict[PrefixKey | None, list[int]] = {}
    for index, text in enumerate(prefixes):
        key = prefix_ids.get(text) if text is not None else None
        if key is not None and (len(key) < 2 or tuple(ids[index][: len(key)]) != key or len(ids[index]) <= len(key)):
            key = None
        groups.setdefault(key, []).append(index)
    for key in [k for k, members in groups.items() if k is not None and len(members) < 2]:
        groups.setdefault(None, []).extend(groups.pop(key))
    return groups
