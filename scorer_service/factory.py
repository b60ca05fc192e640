"""Loads a dual-encoder checkpoint, a Hugging Face hub id or a local directory, into a ClipEncoder.

Any transformers model with `get_text_features` and `get_image_features` loads
(CLIP, SigLIP, SigLIP2, ALIGN...; scorer_service.model says how each family's
text is padded); anything else is refused with the reason, never replaced.
Behind a firewall a directory must load with no network, so a directory is
always read with `local_files_only`.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from scorer_service.cpu_kernels import use_onednn_kernels
from scorer_service.device import DeviceUnavailableError, pick_device, pick_dtype
from scorer_service.model import ClipEncoder
from scorer_service.tokenizer import PromptTokenizer

log = structlog.get_logger(__name__)


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message says what was tried."""


def load_clip(ref: str, device: str = "auto", dtype: str = "auto", cpu_matmul: str = "onednn") -> ClipEncoder:
    """Loads a dual encoder from a local directory (offline) or a hub id; raises ModelLoadError.

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
    where = f"local directory {local.resolve()}" if is_dir else f"Hugging Face hub id {ref!r} (offline={offline})"
    try:
        model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=torch_dtype)
        if not all(callable(getattr(model, method, None)) for method in ("get_text_features", "get_image_features")):
            raise ModelLoadError(
                f"cannot serve the model from {where}: {type(model).__name__} is not a dual encoder "
                "(it lacks get_text_features and get_image_features)"
            )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        image_processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline, backend="pil")
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the model from {where}: {err}") from err
    model.eval().to(torch_device)
    onednn_modules = use_onednn_kernels(model) if cpu_matmul == "onednn" else 0
    context_length = int(model.config.text_config.max_position_embeddings)
    log.info(
        "model_loaded",
        model=ref,
        family=model.config.model_type,
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
