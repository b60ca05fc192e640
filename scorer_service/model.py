"""A loaded dual encoder (CLIP, SigLIP, SigLIP2, ALIGN...): prompts and images to normalised embeddings.

Any transformers model with `get_text_features` and `get_image_features`
serves. Families differ in how their text tower reads a batch (`TextConvention`):

- CLIP's tower is causal and pools the end-of-text token, so padding after it
  cannot change the embedding: text is padded to the longest prompt of a chunk,
  and prompts whose template prefix tokenizes alike share its hidden states
  (prefix_groups, prefix_sharing). This fast path is valid for CLIP alone.
- SigLIP and SigLIP2 were trained on text padded to the tower's full length
  (64 tokens) with no attention mask, and pool the last position: their prompts
  are padded to the context length, unmasked, on the side the checkpoint's
  tokenizer pads (transformers' Siglip2Tokenizer pads on the left), as their
  processors do with `padding="max_length"`.
- ALIGN's BERT tower attends both ways but masks the padding, and pools the
  first token: padding to the longest prompt, masked, gives the embeddings of
  any longer padding.

A family not listed is padded to its context length with the mask, as most
processors do with `padding="max_length"`, and never shares prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from PIL import Image
from transformers import BaseImageProcessor, CLIPModel, PreTrainedModel

from scorer_service.prefix_groups import prefix_groups
from scorer_service.prefix_sharing import encode_with_shared_prefixes
from scorer_service.tokenizer import PromptTokenizer

# Prompts per encoder call: large enough to keep matrix units busy, small enough
# to bound activation memory (256 x 77 tokens x 2048 floats per MLP layer).
CHUNK_PROMPTS = 256


@dataclass(frozen=True)
class TextConvention:
    """How a family's text tower reads a batch of prompts (the module's docstring says why each)."""

    pad_to_context: bool  # pad every prompt to the context length, not to the chunk's longest
    attention_mask: bool  # pass the mask of the padding (False: the tower was trained without one)
    shared_prefixes: bool  # causal tower pooled at the end-of-text token: prompts may share a prefix's states


TEXT_CONVENTIONS = {
    "clip": TextConvention(pad_to_context=False, attention_mask=True, shared_prefixes=True),
    "siglip": TextConvention(pad_to_context=True, attention_mask=False, shared_prefixes=False),
    "siglip2": TextConvention(pad_to_context=True, attention_mask=False, shared_prefixes=False),
    "align": TextConvention(pad_to_context=False, attention_mask=True, shared_prefixes=False),
}
OTHER_FAMILIES = TextConvention(pad_to_context=True, attention_mask=True, shared_prefixes=False)


def text_convention(model: PreTrainedModel) -> TextConvention:
    return TEXT_CONVENTIONS.get(str(model.config.model_type), OTHER_FAMILIES)


@dataclass
class ClipEncoder:
    """A loaded dual encoder (CLIP or another family, see the module's docstring) and its preprocessing."""

    name: str
    model: PreTrainedModel
    tokenizer: PromptTokenizer
    image_processor: BaseImageProcessor | None
    device: torch.device
    dtype: torch.dtype

    @property
    def convention(self) -> TextConvention:
        return text_convention(self.model)

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
        part before `{}`), if known. Where the family allows it (CLIP), prompts with
        the same prefix share its hidden states (see prefix_sharing); the rest go in
        length-sorted chunks, padded as the family's TextConvention says.
        """
        pad_id = self.tokenizer.pad_token_id
        convention = self.convention
        rows: list[torch.Tensor] = []
        pieces: list[torch.Tensor] = []
        shareable = prefixes if prefixes is not None and convention.shared_prefixes else [None] * len(ids)
        groups = prefix_groups(self.tokenizer, ids, shareable)
        unshared = groups.pop(None, [])
        prefix_of = {i: key for key, members in groups.items() for i in members if key is not None}
        suffix = {i: list(ids[i][len(key) :]) for i, key in prefix_of.items()}
        for chunk in _length_sorted_chunks(list(prefix_of), suffix):
            keys = list(dict.fromkeys(prefix_of[i] for i in chunk))
            slot = {key: k for k, key in enumerate(keys)}
            features = encode_with_shared_prefixes(
                cast(CLIPModel, self.model),
                [list(k) for k in keys],
                [suffix[i] for i in chunk],
                [slot[prefix_of[i]] for i in chunk],
                pad_id,
            )
            rows.append(torch.tensor(chunk))
            pieces.append(self._normalise(features))
        for chunk in _length_sorted_chunks(unshared, ids):
            width = self.context_length if convention.pad_to_context else len(ids[chunk[-1]])
            pad_left = convention.pad_to_context and self.tokenizer.hf.padding_side == "left"
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, index in enumerate(chunk):
                where = slice(width - len(ids[index]), width) if pad_left else slice(0, len(ids[index]))
                input_ids[row, where] = torch.tensor(ids[index])
                attention_mask[row, where] = 1
            inputs = {"input_ids": input_ids.to(self.device)}
            if convention.attention_mask:
                inputs["attention_mask"] = attention_mask.to(self.device)
            rows.append(torch.tensor(chunk))
            pieces.append(self._normalise(_as_tensor(self._tower("get_text_features")(**inputs))))
        if not pieces:
            return torch.empty(0, 0, dtype=self.dtype, device=self.device)
        features = torch.cat(pieces)
        out = torch.empty_like(features)
        out[torch.cat(rows).to(self.device)] = features
        return out

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings [len(images), dim], in the model's dtype."""
        if self.image_processor is None:
            raise ValueError(f"{self.name} has no image processor: it encodes text only")
        # all the processor's outputs: SigLIP2's patches come with their mask and shapes
        inputs = self.image_processor(images=list(images), return_tensors="pt")
        tensors = {
            key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in inputs.items()
        }
        return self._normalise(_as_tensor(self._tower("get_image_features")(**tensors)))

    def preprocessing_config(self) -> dict:
        return self.image_processor.to_dict() if self.image_processor is not None else {}

    def _tower(self, method: str) -> Callable[..., object]:
        """`get_text_features` or `get_image_features`, which every family names alike but no base class declares."""
        return cast(Callable[..., object], getattr(self.model, method))

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
    raise TypeError(f"unexpected feature output {type(output).__name__}")
