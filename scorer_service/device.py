"""Where the model runs and in what precision, and how much work one encoder batch merges there."""

from __future__ import annotations

import torch

from scorer_service.model import CHUNK_PROMPTS


class DeviceUnavailableError(RuntimeError):
    """The device asked for is not there; the message says which."""


def pick_device(requested: str) -> torch.device:
    """`auto`: the GPU when torch sees one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {requested!r} was asked for, but torch sees no CUDA GPU")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 (else fp16) on a GPU, fp32 on CPU."""
    if requested != "auto":
        dtype: torch.dtype = getattr(torch, requested)
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def default_batch_prompts(device: torch.device) -> int:
    """How many prompts concurrent calls may merge into one encoder batch.

    On CPU one chunk keeps every core busy, so merging beyond it gains nothing
    and makes every call in the batch wait for all of it (measured in
    bench/grpc_load.py). A GPU is far from busy on one chunk.
    """
    return CHUNK_PROMPTS if device.type == "cpu" else 4096
