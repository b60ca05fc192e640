"""Loads a CLIP checkpoint and encodes text and images with it.

A checkpoint is a Hugging Face hub id or a local directory. Behind a firewall
a directory must load with no network, so a directory is always read with
`local_files_only`. Text is padded to the longest prompt of a batch, not to
77 tokens: CLIP's text tower is causal and pools the end-of-text token, so
padding after it cannot change the embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from scorer_service.cpu_kernels import use_onednn_kernels
from scorer_service.prefix_sharing import encode_with_shared_prefixes

log = structlog.get_logger(__name__)

# Prompts per encoder call: large enough to keep matrix units busy, small enough
# to bound activation memory (256 x 77 tokens x 2048 floats per MLP layer).
CHUNK_PROMPTS = 256


def default_batch_prompts(device: torch.device) -> int:
    """How many prompts concurrent calls may merge into one encoder batch.

    On CPU one chunk keeps every core busy, so merging beyond it gains nothing
    and makes every call in the batch wait for all of it (measured in
    bench/grpc_load.py). A GPU is far from busy on one chunk.
    """
    return CHUNK_PROMPTS if device.type == "cpu" else 4096


class ModelLoadError(RuntimeError):
    """The checkpoint could not be loaded; the message says what was tried."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} was asked for, but torch sees no CUDA GPU")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class ClipEncoder:
    """A loaded CLIP: the text and image towers plus their preprocessing."""

    name: str
    model: CLIPModel
    tokenizer: object
    image_processor: object
    device: torch.device
    dtype: torch.dtype

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def token_lengths(self, prompts: Sequence[str]) -> list[int]:
        """Token counts with start and end tokens, untruncated."""
        return [len(ids) for ids in self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], prefixes: Sequence[str | None] | None = None) -> torch.Tensor:
        """L2-normalised embeddings [len(prompts), dim], in the model's dtype.

        `prefixes[i]` is the text before the class name in prompt i (the template's
        part before `{}`), if known. Prompts with the same prefix share its hidden
        states (see prefix_sharing); the rest are padded per length-sorted chunk.
        """
        ids = self.tokenizer(list(prompts), truncation=True, max_length=self.context_length)["input_ids"]
        out = torch.empty(len(ids), self.model.config.projection_dim, dtype=self.dtype, device=self.device)
        groups = self._prefix_groups(ids, prefixes or [None] * len(ids))
        unshared = groups.pop(None, [])
        prefix_of = {i: key for key, members in groups.items() for i in members}
        suffix = {i: ids[i][len(key) :] for i, key in prefix_of.items()}
        for chunk in _length_sorted_chunks(list(prefix_of), suffix):
            keys = list(dict.fromkeys(prefix_of[i] for i in chunk))
            slot = {key: k for k, key in enumerate(keys)}
            features = encode_with_shared_prefixes(
                self.model, [list(k) for k in keys], [suffix[i] for i in chunk], [slot[prefix_of[i]] for i in chunk],
                self.tokenizer.pad_token_id,
            )
            out[torch.tensor(chunk, device=self.device)] = self._normalise(features)
        for chunk in _length_sorted_chunks(unshared, ids):
            width = len(ids[chunk[-1]])
            input_ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                input_ids[row, : len(ids[index])] = torch.tensor(ids[index])
                attention_mask[row, : len(ids[index])] = 1
            features = _as_tensor(self.model.get_text_features(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)))
            out[torch.tensor(chunk, device=self.device)] = self._normalise(features)
        return out

    def _prefix_groups(self, ids: list[list[int]], prefixes: Sequence[str | None]) -> dict[tuple[int, ...] | None, list[int]]:
        """Prompt indices by the token ids of their shared prefix (None: not shareable).

        A prefix is shared only when its tokens are exactly the first tokens of the
        prompt (BPE may merge across the class-name boundary, as in "photo-{}").
        """
        prefix_ids = {
            text: tuple(self.tokenizer(text)["input_ids"][:-1])
            for text in set(prefixes) if text is not None
        }
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for index, text in enumerate(prefixes):
            key = prefix_ids.get(text) if text is not None else None
            if key is not None and (len(key) < 2 or tuple(ids[index][: len(key)]) != key or len(ids[index]) <= len(key)):
                key = None
            groups.setdefault(key, []).append(index)
        for key in [k for k, members in groups.items() if k is not None and len(members) < 2]:
            groups.setdefault(None, []).extend(groups.pop(key))
        return groups

    def _normalise(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.float(), dim=-1).to(self.dtype)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings [len(images), dim], in the model's dtype."""
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return self._normalise(_as_tensor(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))))

    def preprocessing_config(self) -> dict:
        return self.image_processor.to_dict()

    def identity(self) -> str:
        """A digest of the weights, dtype and preprocessing: what image features depend on.

        Hashing the weights costs about a second for ViT-B/32 at start-up and keeps
        a cache from ever serving features of a different checkpoint with the same name.
        """
        digest = hashlib.blake2b(digest_size=16)
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update(str(self.dtype).encode())
        digest.update(json.dumps(self.preprocessing_config(), sort_keys=True, default=str).encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """What a caller sees of the model: its digest (ClipEncoder.identity) and a version for people."""

    digest: str
    version: str

    @classmethod
    def of(cls, encoder: ClipEncoder, digest: str, version: str = "") -> ModelIdentity:
        """`version` as the operator set it; empty: the model's name and the digest's first 12 characters."""
        return cls(digest, version or f"{Path(encoder.name).name}@{digest[:12]}")


def _length_sorted_chunks(indices: list[int], ids, size: int = CHUNK_PROMPTS) -> list[list[int]]:
    """Chunks of prompts of similar length, so each pads little."""
    ordered = sorted(indices, key=lambda i: len(ids[i]))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def _as_tensor(output: object) -> torch.Tensor:
    # transformers 5 may return a model output object instead of a tensor
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")


def load_clip(ref: str, device: str = "auto", dtype: str = "auto", cpu_matmul: str = "onednn") -> ClipEncoder:
    """Loads CLIP from a local directory (offline) or a hub id; raises ModelLoadError.

    `cpu_matmul="onednn"` runs fp32 linear layers and MLPs on CPU through oneDNN (see cpu_kernels).
    """
    local = Path(ref).expanduser()
    is_dir = local.is_dir()
    if not is_dir and not _looks_like_hub_id(ref):
        raise ModelLoadError(f"model directory {local.resolve()} does not exist (and {ref!r} is not a hub id like 'openai/clip-vit-base-patch32')")
    source = str(local) if is_dir else ref
    offline = is_dir or os.environ.get("HF_HUB_OFFLINE") == "1"
    torch_device = pick_device(device)
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
    log.info("model_loaded", model=ref, device=str(torch_device), dtype=str(torch_dtype).removeprefix("torch."),
             context_length=int(model.config.text_config.max_position_embeddings), onednn_modules=onednn_modules)
    return ClipEncoder(ref, model, tokenizer, image_processor, torch_device, torch_dtype)


def _looks_like_hub_id(ref: str) -> bool:
    """`owner/name` or `name`, never a path that starts with '.', '/' or '~'."""
    parts = ref.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not ref.startswith((".", "/", "~"))
