"""A loaded CLIP: its text and image towers, encoding prompts and images to normalised embeddings.

Text is padded to the longest prompt of a chunk, not to 77 tokens: CLIP's text
tower is causal and pools the end-of-text token, so padding after it cannot
change the embedding. Prompts whose template prefix tokenizes alike share its
hidden states (prefix_groups, prefix_sharing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import BaseImageProcessor, CLIPModel

from scorer_service.prefix_groups import prefix_groups
from scorer_service.prefix_sharing import encode_with_shared_prefixes
from scorer_service.tokenizer import PromptTokenizer

# Prompts per encoder call: large enough to keep matrix units busy, small enough
# to bound activation memory (256 x 77 tokens x 2048 floats per MLP layer).
CHUNK_PROMPTS = 256


@dataclass
class ClipEncoder:
    """A loaded CLIP: the text and image towers plus their preprocessing."""

    name: str
    model: CLIPModel
    tokenizer: PromptTokenizer
    image_processor: BaseImageProcessor | None
    device: torch.device
    dtype: torch.dtype

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @torch.inference_mode()
    def encode_text(self, prompts: Sequence[str], prefixes: Sequence[str | None] | None = None) -> torch.Tensor:
        """L2-normalised embeddings [len(prompts), dim], in the model's dtype; prompts longer than the context are
        cut as CLIP's tokenizer cuts them. `prefixes` as in `encode_ids`."""
        return self.encode_ids(self.tokenizer.ids(prompts), prefixes)

    @torch.inference_mode()
    def encode_ids(self, ids: Sequence[Sequence[int]], prefixes: Sequence[str | None] | None = None) -> torch.Tensor:
        """L2-normalised embeddings [len(ids), dim] of tokenized prompts (each within the context), in the model's
        dtype.

        `prefixes[i]` is the text before the class name in prompt i (the template's
        part before `{}`), if known. Prompts with the same prefix share its hidden
        states (see prefix_sharing); the rest are padded per length-sorted chunk.
        """
        pad_id = self.tokenizer.pad_token_id
        out = torch.empty(len(ids), self.model.text_projection.out_features, dtype=self.dtype, device=self.device)
        groups = prefix_groups(self.tokenizer, ids, prefixes or [None] * len(ids))
        unshared = groups.pop(None, [])
        prefix_of = {i: key for key, members in groups.items() for i in members if key is not None}
        suffix = {i: list(ids[i][len(key) :]) for i, key in prefix_of.items()}
        for chunk in _length_sorted_chunks(list(prefix_of), suffix):
            keys = list(dict.fromkeys(prefix_of[i] for i in chunk))
            slot = {key: k for k, key in enumerate(keys)}
            features = encode_with_shared_prefixes(
                self.model,
                [list(k) for k in keys],
                [suffix[i] for i in chunk],
                [slot[prefix_of[i]] for i in chunk],
                pad_id,
            )
            out[torch.tensor(chunk, device=self.device)] = self._normalise(features)
        for chunk in _length_sorted_chunks(unshared, ids):
            width = len(ids[chunk[-1]])
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                input_ids[row, : len(ids[index])] = torch.tensor(ids[index])
                attention_mask[row, : len(ids[index])] = 1
            features = _as_tensor(
                self.model.get_text_features(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
                )
            )
            out[torch.tensor(chunk, device=self.device)] = self._normalise(features)
        return out

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings [len(images), dim], in the model's dtype."""
        if self.image_processor is None:
            raise ValueError(f"{self.name} has no image processor: it encodes text only")
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return self._normalise(_as_tensor(features))

    def preprocessing_config(self) -> dict:
        return self.image_processor.to_dict() if self.image_processor is not None else {}

    def _normalise(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(features.float(), dim=-1).to(self.dtype)


def _length_sorted_chunks(
    indices: list[int], ids: Mapping[int, Sequence[int]] | Sequence[Sequence[int]], size: int = CHUNK_PROMPTS
) -> list[list[int]]:
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
