"""CLIP's tokenizer as the scorer uses it: prompt token ids, their counts, a template prefix's ids.

The scorer tokenizes each prompt it must encode once (`token_ids`): the same
ids decide whether the prompt fits the context, tell prompts that the model
reads alike apart from those it does not, and go to the encoder.

Scoring threads count tokens while the encoder thread tokenizes, on one
tokenizer. A transformers fast tokenizer keeps truncation as state on its Rust
tokenizer and changes it when a call asks for other settings, so concurrent
calls with different settings could see each other's. Every call here is
therefore untruncated, and `ids` cuts overlong prompts itself, as the
tokenizer's truncation does (the first tokens, then the end-of-text token).
Calls go in chunks: the Rust side releases the GIL, the conversion of its
results does not, and a chunk's conversion is short enough not to stall the
event loop's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

TOKENIZE_CHUNK = 4096


@dataclass(frozen=True)
class PromptTokenizer:
    """The checkpoint's tokenizer (`hf`) and the text tower's context length."""

    hf: PreTrainedTokenizerBase
    context_length: int

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    def token_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids with start and end tokens, untruncated (a prompt longer than the context keeps every id)."""
        prompts = list(prompts)
        return [
            ids
            for start in range(0, len(prompts), TOKENIZE_CHUNK)
            for ids in self.hf(prompts[start : start + TOKENIZE_CHUNK], add_special_tokens=True)["input_ids"]
        ]

    def lengths(self, prompts: Sequence[str]) -> list[int]:
        """Token counts with start and end tokens, untruncated."""
        return [len(ids) for ids in self.token_ids(prompts)]

    def ids(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids with start and end tokens, cut to the context length."""
        limit = self.context_length
        return [ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]] for ids in self.token_ids(prompts)]

    def prefix_ids(self, text: str) -> tuple[int, ...]:
        """The ids of a prompt's beginning: its start token and text, without the end token."""
        return tuple(self.token_ids([text])[0][:-1])
