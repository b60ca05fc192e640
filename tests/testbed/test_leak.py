"""No image the scorer serves to a search was seen when the testbed CLIPs trained."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from scorer_service.datasets import load_image_folder
from testbed.fashion_mnist import prepare_testbed_task, training_images


def _pixel_hash(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def test_no_image_the_scorer_serves_was_seen_in_training():
    dataset = load_image_folder(prepare_testbed_task())
    served = {}
    for image in (*dataset.train, *dataset.test):
        with Image.open(image.path) as png:
            served[_pixel_hash(np.asarray(png.convert("L")))] = image.path
    trained = {_pixel_hash(pixels) for pixels in training_images()[0]}
    seen = sorted(str(path) for digest, path in served.items() if digest in trained)
    assert len(dataset.train) >= 10 * 32 and len(dataset.test) == 10_000  # room for a train and a val draw of 16
    assert not seen, f"{len(seen)} served images were trained on, e.g. {seen[:3]}"
