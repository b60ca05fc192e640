"""What a model is, as callers and caches see it: a digest of its weights, dtype and preprocessing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from scorer_service.model import ClipEncoder


def weights_digest(encoder: ClipEncoder) -> str:
    """A digest of the weights, dtype and preprocessing: what image features depend on.

    Hashing the weights costs about a second for ViT-B/32 at start-up and keeps
    a cache from ever serving features of a different checkpoint with the same name.
    """
    digest = hashlib.blake2b(digest_size=16)
    for key, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(str(encoder.dtype).encode())
    digest.update(json.dumps(encoder.preprocessing_config(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a caller sees of the model: its digest (weights_digest) and a version for people."""

    digest: str
    version: str

    @classmethod
    def of(cls, encoder: ClipEncoder, digest: str, version: str = "") -> ModelIdentity:
        """`version` as the operator set it; empty: the model's name and the digest's first 12 characters."""
        return cls(digest, version or f"{Path(encoder.name).name}@{digest[:12]}")
