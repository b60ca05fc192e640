"""White-box comparators on the shots the scorer serves: a linear probe and CoOp, on a tiny model."""

from __future__ import annotations

from scorer_service.datasets import few_shot, load_image_folder
from testbed import whitebox
from testbed.fashion_mnist import prepare_testbed_task
from testbed.train import zero_shot_accuracies


def _shots(seed: int):
    return few_shot(load_image_folder(prepare_testbed_task()).train, 4, seed)


def test_a_linear_probe_on_the_shots_beats_chance_and_is_deterministic(small_model):
    accuracy = whitebox.linear_probe_accuracy(small_model, _shots(1))
    assert 20 < accuracy <= 100
    assert whitebox.linear_probe_accuracy(small_model, _shots(1)) == accuracy


def test_coop_learns_a_context_that_beats_its_initial_prompt(small_model):
    names = load_image_folder(prepare_testbed_task()).class_names  # the scorer's order, not label order
    initial = 100 * zero_shot_accuracies(small_model, ["a photo of a {}."])["a photo of a {}."]
    learned = whitebox.coop_accuracy(small_model, _shots(1), names)
    assert learned > initial + 1
    assert whitebox.coop_accuracy(small_model, _shots(1), names) == learned
