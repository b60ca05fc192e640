"""The testbed's tokenizer is OpenAI CLIP's: ids equal open_clip's own SimpleTokenizer."""

from __future__ import annotations

import importlib.util
import random

import pytest

from testbed.tokenizer import VOCAB_SIZE, bpe_path, clip_tokenizer

WORDS = (
    "photo",
    "Picture",
    "of",
    "a",
    "the",
    "{}",
    "T-shirt",
    "ankle boot",
    "isn't",
    "it's",
    "we'll",
    "2.5x",
    "1024",
    "#ootd",
    "low-res",
    "café",
    "naïve",
    "Über",
    "façade",
    "東京",
    "😀",
    "--",
    "...",
    "!!",
    "(close-up)",
    "black/white",
    "rock'n'roll",
    "e-mail",
    "3D",
    "x-ray",
    "über-cool",
    "SÃO",
    "jalapeño",
    "  ",
    "\t",
    "a_b",
    "C++",
    "$9.99",
    "50%",
    "mid-century",
    "résumé",
    "Ω",
    "ß",
    "İstanbul",
)


def _open_clip_tokenizer():
    """open_clip's tokenizer module, loaded from its file (the package needs torchvision to import)."""
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", bpe_path().parent / "tokenizer.py")
    assert spec is not None and spec.loader is not None, "open_clip's tokenizer.py is a Python file"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def _strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizers():
    return _open_clip_tokenizer(), clip_tokenizer()


def test_vocabulary_is_openai_clips(tokenizers):
    reference, ours = tokenizers
    assert len(ours) == VOCAB_SIZE == len(reference.encoder) == 49408
    assert ours.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert ours.convert_tokens_to_ids(list(reference.encoder)[:49406]) == list(range(49406))


def test_ids_equal_open_clips_on_1200_varied_strings(tokenizers):
    reference, ours = tokenizers
    strings = _strings(1200)
    mismatches = [s for s in strings if reference.encode(s) != ours(s, add_special_tokens=False)["input_ids"]]
    assert mismatches == []


def test_text_cleaning_is_the_one_known_difference(tokenizers):
    """open_clip first repairs text with ftfy and unescapes HTML entities; transformers'
    CLIPTokenizer does neither. Templates are plain text, so this only matters for
    text holding entities or typographic ligatures."""
    reference, ours = tokenizers
    for raw, cleaned in (("fish &amp; chips", "fish & chips"), ("\ufb01ne", "fine")):
        assert reference.encode(raw) == ours(cleaned, add_special_tokens=False)["input_ids"]
        assert reference.encode(raw) != ours(raw, add_special_tokens=False)["input_ids"]


def test_real_token_lengths(tokenizers):
    _, ours = tokenizers
    assert len(ours("a photo of a dog.")["input_ids"]) == 8  # start, 5 words, ".", end
