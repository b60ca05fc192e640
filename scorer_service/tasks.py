"""Task loading at start: each configured source becomes a Task, with its image features per split."""

from __future__ import annotations

import structlog

from scorer_service.config import ScorerConfig
from scorer_service.coop import load_coop_task
from scorer_service.datasets import Task, build_task, load_image_folder
from scorer_service.features import SplitFeatures, load_split_features
from scorer_service.model import ClipEncoder

log = structlog.get_logger(__name__)


def load_tasks(
    config: ScorerConfig, encoder: ClipEncoder, identity: str
) -> tuple[dict[str, Task], dict[tuple[str, str], SplitFeatures]]:
    """Builds every task and loads (or computes) its image features (cached under the model's `identity`)."""
    tasks, features = {}, {}
    for source in config.tasks:
        if source.coop_dataset:
            task = load_coop_task(
                source.task_id, source.coop_dataset, source.root, config.shots, config.seed, config.val_shots
            )
        else:
            dataset = load_image_folder(source.root, config.split_seed, config.test_fraction)
            task = build_task(source.task_id, dataset, config.shots, config.seed, val_shots=config.val_shots)
        tasks[task.task_id] = task
        for split, images in task.splits.items():
            features[task.task_id, split] = load_split_features(
                encoder, identity, images, config.cache_dir, config.image_batch_size, f"{task.task_id}/{split}"
            )
        log.info(
            "task_ready",
            task=task.task_id,
            classes=len(task.class_names),
            **{f"{split}_images": len(images) for split, images in task.splits.items()},
        )
    return tasks, features
