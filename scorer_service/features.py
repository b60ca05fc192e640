"""Image features of a task's splits, computed once and cached on disk.

Encoding images is the slow part of start-up. The cache key is the model's
identity (weights, dtype, preprocessing) plus every image's path, size, mtime
and label, so a changed file or model never reuses stale features, and a
restart with the same ones reads them back in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from scorer_service import metrics
from scorer_service.datasets import LabeledImage
from scorer_service.model import ClipEncoder

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SplitFeatures:
    """Normalised image features on the model's device and dtype, with labels."""

    features: torch.Tensor
    labels: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.labels.numel())


def cache_key(model_identity: str, images: tuple[LabeledImage, ...]) -> str:
    digest = hashlib.sha256(model_identity.encode())
    for image in images:
        stat = image.path.stat()
        digest.update(json.dumps([str(image.path.resolve()), stat.st_size, stat.st_mtime_ns, image.label]).encode())
    return digest.hexdigest()


def _encode(encoder: ClipEncoder, images: tuple[LabeledImage, ...], batch_size: int, what: str) -> torch.Tensor:
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pictures = []
        for image in batch:
            with Image.open(image.path) as picture:
                pictures.append(picture.convert("RGB"))
        chunks.append(encoder.encode_images(pictures).cpu())
        log.info("image_features_progress", split=what, done=start + len(batch), total=len(images))
    return torch.cat(chunks)


def load_split_features(
    encoder: ClipEncoder,
    model_identity: str,
    images: tuple[LabeledImage, ...],
    cache_dir: Path,
    batch_size: int,
    what: str,
) -> SplitFeatures:
    """Reads the split's features from the cache, or encodes and stores them."""
    key = cache_key(model_identity, images)
    path = Path(cache_dir) / f"{key}.safetensors"
    started = time.perf_counter()
    if path.exists():
        try:
            stored = load_file(path)
            features, labels = stored["features"], stored["labels"]
            metrics.IMAGE_FEATURES_SECONDS.labels("load").observe(time.perf_counter() - started)
            log.info("image_features_loaded", split=what, images=len(images), path=str(path))
            return SplitFeatures(features.to(encoder.device, encoder.dtype), labels.to(encoder.device))
        except Exception as err:  # noqa: BLE001 - a corrupt cache file is recomputed, not fatal
            log.warning("image_features_cache_unreadable", path=str(path), error=str(err))
    features = _encode(encoder, images, batch_size, what)
    labels = torch.tensor([image.label for image in images], dtype=torch.long)
    metrics.IMAGE_FEATURES_SECONDS.labels("compute").observe(time.perf_counter() - started)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"features": features.contiguous(), "labels": labels}, str(partial))
    partial.replace(path)  # atomic: a crash never leaves a half-written cache entry
    log.info("image_features_computed", split=what, images=len(images), seconds=round(time.perf_counter() - started, 3))
    return SplitFeatures(features.to(encoder.device, encoder.dtype), labels.to(encoder.device))
