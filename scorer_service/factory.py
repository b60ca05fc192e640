"""Loads a CLIP checkpoint, a Hugging Face hub id or a local directory, into a ClipEncoder.

Behind a firewall a directory must load with no network, so a directory is
always read with `local_files_only`.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path

import structlog
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPTextConfig

from scorer_service.cpu_kernels import use_onednn_kernels
from scorer_service.device import DeviceUnavailableError, pick_device, pick_dtype
from scorer_service.model import ClipEncoder
from scorer_service.tokenizer import PromptTokenizer

log = structlog.get_logger(__name__)


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message says what was tried."""


def load_clip(ref: str, device: str = "auto", dtype: str = "auto", cpu_matmul: str = "onednn") -> ClipEncoder:
    """Loads CLIP from a local directory (offline) or a hub id; raises ModelLoadError.

    `cpu_matmul="onednn"` runs fp32 linear layers and MLPs on CPU through oneDNN (see cpu_kernels).
    """
    local = Path(ref).expanduser()
    is_dir = local.is_dir()
    if not is_dir and not _looks_like_hub_id(ref):
        raise ModelLoadError(
            f"model directory {local.resolve()} does not exist "
            f"(and {ref!r} is not a hub id like 'openai/clip-vit-base-patch32')"
        )
    source = str(local) if is_dir else ref
    offline = is_dir or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        torch_device = pick_device(device)
    except DeviceUnavailableError as err:
        raise ModelLoadError(str(err)) from err
    torch_dtype = pick_dtype(dtype, torch_device)
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=offline, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline, backend="pil")
    except (OSError, ValueError) as err:
        where = f"local directory {local.resolve()}" if is_dir else f"Hugging Face hub id {ref!r} (offline={offline})"
        raise ModelLoadError(f"cannot load CLIP model from {where}: {err}") from err
    model.eval().to(torch_device)
    onednn_modules = use_onednn_kernels(model) if cpu_matmul == "onednn" else 0
    text_config = typing.cast(CLIPTextConfig, model.config.text_config)  # CLIPConfig makes its dict one
    context_length = int(text_config.max_position_embeddings)
    log.info(
        "model_loaded",
        model=ref,
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        context_length=context_length,
        onednn_modules=onednn_modules,
    )
    return ClipEncoder(
        ref, model, PromptTokenizer(tokenizer, context_length), image_processor, torch_device, torch_dtype
    )


def _looks_like_hub_id(ref: str) -> bool:
    """`owner/name` or `name`, never a path that starts with '.', '/' or '~'."""
    parts = ref.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not ref.startswith((".", "/", "~"))
