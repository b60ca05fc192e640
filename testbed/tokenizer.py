"""OpenAI CLIP's tokenizer, offline, as a transformers `CLIPTokenizer`.

OpenAI's BPE merges ship as a data file inside the `open_clip_torch` wheel
(MIT licence). The Makefile installs that wheel `--no-deps` and we read only its
data file: the package itself needs torchvision, which does not import here.
The vocabulary is built as OpenAI's is: the 256 byte symbols, the same with the
end-of-word mark, one entry per merge (the first 48,894 merges of the file),
then the start and end tokens: 49,408 entries.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BPE_PACKAGE = "open_clip"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # OpenAI's vocabulary size minus bytes and specials
START, END = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 2 * 256 + MERGES + 2


class TokenizerDataMissing(RuntimeError):
    """The packaged BPE file is not installed; the message says how to get it."""


def bpe_path() -> Path:
    """The merges file inside the installed open_clip package, found without importing it."""
    spec = importlib.util.find_spec(BPE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    raise TokenizerDataMissing(
        f"{BPE_FILE} not found: install the open_clip_torch wheel without its dependencies "
        "(make env does: pip install --no-deps open_clip_torch==3.3.0)"
    )


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = tuple(
        (first, second) for first, second in (line.split() for line in lines[1 : MERGES + 1])
    )  # line 0: a header
    symbols = list(bytes_to_unicode().values())
    entries = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), START, END]
    return {token: index for index, token in enumerate(entries)}, merges


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A fresh tokenizer with OpenAI CLIP's vocabulary and merges (ids 49406/49407: start/end)."""
    vocab, merges = _vocab_and_merges()
    # transformers hints merges as list[str]; it hands them to tokenizers' BPE, which takes the (a, b) pairs given here.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)  # type: ignore[arg-type]
