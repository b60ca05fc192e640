"""Builds randomly initialised CLIP checkpoints on disk, in the Hugging Face layout.

Pretrained weights cannot be downloaded on machines without hub access. Tests,
benchmarks and the demo's fallback need a real checkpoint directory anyway, so
that the scorer's normal loading path runs. The weights are random: accuracies
from these models are chance level and are never results.

The tokenizer is OpenAI CLIP's real BPE (testbed.tokenizer), so token lengths,
and with them the cost of every prompt, are those of real CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from promptclimb_common.cli_help import ArgumentParser
from testbed.tokenizer import clip_tokenizer

UNTRAINED_MARKER = "promptclimb_untrained.txt"


@dataclass(frozen=True)
class ClipShape:
    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    projection_dim: int


SHAPES = {
    # Small enough for unit tests on 2 CPU cores.
    "tiny": ClipShape(32, 2, 2, 32, 2, 2, 32, 8, 16),
    # The cost shape of OpenAI's ViT-B/32: what benchmarks and the demo need.
    "vit-b-32": ClipShape(512, 12, 8, 768, 12, 12, 224, 32, 512),
}


def build_random_clip(directory: Path, shape: str = "tiny", seed: int = 0) -> Path:
    """Writes model, tokenizer and image processor to `directory`; returns it."""
    s = SHAPES[shape]
    tokenizer = clip_tokenizer()
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": s.text_width,
            "intermediate_size": 4 * s.text_width,
            "num_hidden_layers": s.text_layers,
            "num_attention_heads": s.text_heads,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": s.vision_width,
            "intermediate_size": 4 * s.vision_width,
            "num_hidden_layers": s.vision_layers,
            "num_attention_heads": s.vision_heads,
            "image_size": s.image_size,
            "patch_size": s.patch_size,
        },
        projection_dim=s.projection_dim,
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": s.image_size}, crop_size={"height": s.image_size, "width": s.image_size}
    ).save_pretrained(directory)
    (directory / UNTRAINED_MARKER).write_text(
        f"Random weights ({shape}, seed {seed}) built by promptclimb: accuracies are chance level.\n"
    )
    return directory


def main() -> None:
    parser = ArgumentParser(description="Write a random-weight CLIP checkpoint (for tests, benchmarks, demos).")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_random_clip(args.directory, args.shape, args.seed))


if __name__ == "__main__":
    main()
