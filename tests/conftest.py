"""Session fixtures: a tiny random-weight CLIP and small image-folder datasets on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptclimb_common.logging import configure_logging
from testbed.random_clip import build_random_clip
from tests.fixtures import write_image_folder

configure_logging("WARNING", json=True)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_random_clip(tmp_path_factory.mktemp("tiny-clip"), "tiny", seed=0)


@pytest.fixture(scope="session")
def image_task_dir(tmp_path_factory) -> Path:
    """4 classes, train/ and test/ folders, 3 + 3 images per class."""
    return write_image_folder(tmp_path_factory.mktemp("dataset"), per_class=6)


def prerequisite(missing: bool, why: str) -> pytest.MarkDecorator:
    """Marks tests that need a tool `make test` installs: without it they fail with `why`, never skip."""
    return pytest.mark.prerequisite(missing=missing, why=why)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "prerequisite(missing, why): fails the test when a required tool is missing")


def pytest_runtest_setup(item) -> None:
    for mark in item.iter_markers("prerequisite"):
        if mark.kwargs["missing"]:
            pytest.fail(f"missing prerequisite: {mark.kwargs['why']}", pytrace=False)
