"""The caption worlds: the planted preference is graded, hidden from the pool, and deterministic."""

from __future__ import annotations

import re

import numpy as np
import pytest

from optimizer_service.seeds import BUILTIN_TEMPLATES
from testbed.worlds import WORLDS, cues, planted, world


def test_every_world_has_the_interface_the_trainer_and_the_ceilings_read():
    for name in WORLDS:
        module = world(name)
        assert len(module.CLASS_NAMES) == 10 and all(len(names) >= 2 for names in module.CLASS_NAMES)
        assert module.CUE_LADDER[0][0] == () and module.PLANTED_OPTIMUM.count("{}") == 1
        assert all(template.count("{}") == 1 for _, template in module.CUE_LADDER)
    with pytest.raises(ValueError, match="worlds: planted, catalog"):
        world("web")


def test_no_cue_is_a_phrase_of_the_built_in_pool():
    for cue in cues(planted):
        pattern = re.compile(rf"\b{re.escape(cue)}\b", re.IGNORECASE)
        assert not any(pattern.search(template) for template in BUILTIN_TEMPLATES), cue


def test_each_cue_is_in_its_ladder_rows_and_the_optimum_holds_them_all():
    for row_cues, template in planted.CUE_LADDER:
        for cue in cues(planted):
            assert (re.search(rf"\b{re.escape(cue)}\b", template) is not None) == (cue in row_cues), template
    assert planted.CUE_LADDER[-1] == (cues(planted), planted.PLANTED_OPTIMUM)


def test_captions_name_the_garment_loosely_less_often_the_more_cues_they_carry():
    labels = np.arange(20_000) % 10
    texts = planted.captions(labels, seed=5)
    assert texts == planted.captions(labels, seed=5) != planted.captions(labels, seed=6)
    loose: dict[int, list[bool]] = {}
    for label, text in zip(labels, texts, strict=True):
        if label not in (1, 2, 3, 4):  # classes whose names share no word with their confused class's name
            continue
        carried = sum(re.search(rf"\b{re.escape(cue)}\b", text) is not None for cue in cues(planted))
        wrong = planted.CLASS_NAMES[planted.CONFUSED_WITH[label]][0]
        loose.setdefault(carried, []).append(re.search(rf"\b{wrong}\b", text) is not None)
    shares = [float(np.mean(loose[k])) for k in sorted(loose)]
    assert sorted(loose) == list(range(len(cues(planted)) + 1))
    assert shares == sorted(shares, reverse=True) and shares[0] > 0.4 and shares[-1] < 0.1
    assert 0.4 < np.mean([k > 0 for k, v in loose.items() for _ in v]) < 0.6  # about half the captions carry a cue
