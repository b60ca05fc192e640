"""The caption worlds: the planted preference is graded, hidden from the pool, and deterministic."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from optimizer_service.seeds import BUILTIN_TEMPLATES
from testbed.train import RECIPES
from testbed.worlds import WORLDS, carried_cues, cue_words, cues, planted, planted_v3, sources, world


def test_every_world_has_the_interface_the_trainer_and_the_ceilings_read():
    for name in WORLDS:
        module = world(name)
        assert len(module.CLASS_NAMES) == 10 and all(len(names) >= 2 for names in module.CLASS_NAMES)
        assert module.CUE_LADDER[0][0] == () and module.PLANTED_OPTIMUM.count("{}") == 1
        assert all(template.count("{}") == 1 for _, template in module.CUE_LADDER)
    with pytest.raises(ValueError, match="worlds: planted, planted_v3, catalog"):
        world("web")


def test_no_cue_word_is_a_word_of_the_built_in_pool_or_of_a_decoy():
    for cue, words in cue_words(planted).items():
        for word in words:
            pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
            assert not any(pattern.search(template) for template in BUILTIN_TEMPLATES), (cue, word)
    assert all(carried_cues(planted, decoy) == () for decoy in planted.DECOYS)


def test_each_cue_is_in_its_ladder_rows_and_the_optimum_holds_them_all():
    for row_cues, template in planted.CUE_LADDER:
        assert carried_cues(planted, template) == tuple(c for c in cues(planted) if c in row_cues), template
    assert planted.CUE_LADDER[-1] == (cues(planted), planted.PLANTED_OPTIMUM)


def test_every_cue_phrase_carries_its_own_cue_and_no_other():
    for cue, phrases in planted.CUE_PHRASES.items():
        assert all(carried_cues(planted, phrase) == (cue,) for phrase in phrases), cue


def test_decoys_do_not_depend_on_the_naming():
    """A long generic template must earn nothing for its length: decoys come as often with loose names as without."""
    labels = np.arange(20_000) % 10
    texts = planted.captions(labels, seed=3)
    with_decoy = [any(decoy in text for decoy in planted.DECOYS) for text in texts]
    assert 0.45 < np.mean(with_decoy) < 0.55
    plain = [
        (decoy, bool(re.search(rf"\b{planted.CLASS_NAMES[planted.CONFUSED_WITH[label]][0]}\b", text)))
        for label, text, decoy in zip(labels, texts, with_decoy, strict=True)
        if label in (1, 2, 3, 4) and not carried_cues(planted, text)
    ]
    loose_with = np.mean([loose for decoy, loose in plain if decoy])
    loose_without = np.mean([loose for decoy, loose in plain if not decoy])
    assert abs(loose_with - loose_without) < 0.05


@pytest.mark.parametrize("module", [planted, planted_v3], ids=["planted", "planted_v3"])
def test_captions_name_the_garment_loosely_less_often_the_more_cues_they_carry(module):
    labels = np.arange(20_000) % 10
    texts = module.captions(labels, seed=5)
    assert texts == module.captions(labels, seed=5) != module.captions(labels, seed=6)
    loose: dict[int, list[bool]] = {}
    for label, text in zip(labels, texts, strict=True):
        if label not in (1, 2, 3, 4):  # classes whose names share no word with their confused class's name
            continue
        carried = len(carried_cues(planted, text))
        wrong = planted.CLASS_NAMES[planted.CONFUSED_WITH[label]][0]
        loose.setdefault(carried, []).append(re.search(rf"\b{wrong}\b", text) is not None)
    shares = [float(np.mean(loose[k])) for k in sorted(loose)]
    assert sorted(loose) == list(range(len(cues(planted)) + 1))
    assert shares == sorted(shares, reverse=True) and shares[0] > 0.5 and shares[-1] < 0.2
    # Each design's own table: the loose share is about LOOSE_NAMING[number of cues] (a precise draw of the
    # official name adds nothing here: these classes' other names never hold the confused class's name).
    assert np.allclose(shares, module.LOOSE_NAMING, atol=0.03), (shares, module.LOOSE_NAMING)
    assert 0.4 < np.mean([k > 0 for k, v in loose.items() for _ in v]) < 0.6  # about half the captions carry a cue


def test_the_third_design_is_the_second_with_precise_names_under_all_cues():
    assert planted_v3.LOOSE_NAMING[:3] == planted.LOOSE_NAMING[:3]
    assert planted_v3.LOOSE_NAMING[3] < planted.LOOSE_NAMING[3]
    assert (planted_v3.CUE_LADDER, planted_v3.CLASS_NAMES) == (planted.CUE_LADDER, planted.CLASS_NAMES)


def test_a_world_built_on_another_is_retrained_when_the_other_changes():
    """The recipe's hash covers the base world's file, so editing planted.py cannot leave a stale planted_v3 model."""
    assert sources(planted_v3) == [Path(planted_v3.__file__), Path(planted.__file__)]
    assert sources(planted) == [Path(planted.__file__)]
    assert RECIPES["planted-v3-p7"].digest() != RECIPES["planted-p7"].digest()
