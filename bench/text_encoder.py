"""Text-encoder scoring speed: the authors' baseline against the scorer's fast path.

Every step is run in this process on the same model, templates and image
features, and reported as a ratio to the baseline measured here. Each step also
checks that its argmax predictions equal the baseline's on every
(template, image) pair it shares with the baseline.

    python -m bench.text_encoder [--classes 100 1000] [--templates 64] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel

from bench.report import write_table
from bench.workload import TEMPLATES, class_names, image_features, word_level_tokenizer
from promptclimb_common.templates import fill
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.datasets import Dataset, Task
from scorer_service.features import SplitFeatures
from scorer_service.model import CHUNK_PROMPTS, ClipEncoder
from scorer_service.random_clip import SHAPES
from scorer_service.scoring import TemplateScorer, TextEmbeddingCache

IMAGES = 1000


def build_encoder(tokenizer, dtype: torch.dtype = torch.float32) -> ClipEncoder:
    """A ViT-B/32-shaped CLIP (random weights) wrapped as the scorer wraps a checkpoint."""
    shape = SHAPES["vit-b-32"]
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=shape.text_width, intermediate_size=4 * shape.text_width,
                         num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),  # the vision tower is not benchmarked
        projection_dim=shape.projection_dim,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval().to(dtype)
    return ClipEncoder("random ViT-B/32 text tower", model, tokenizer, None, torch.device("cpu"), dtype)


def text_tower_flops_per_token(encoder: ClipEncoder, tokens_per_prompt: float) -> float:
    """Multiply-adds x2 of the text tower per token: linear layers plus attention scores."""
    config = encoder.model.config.text_config
    width, layers = config.hidden_size, config.num_hidden_layers
    linear = layers * (4 * width * width + 2 * width * config.intermediate_size)
    attention = layers * 2 * tokens_per_prompt * width
    return 2 * (linear + attention)


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class StepResult:
    name: str
    templates: int
    classes: int
    seconds: float
    executed_tokens: int
    predictions: torch.Tensor  # [templates, images]
    peak_rss_mib: float
    dtype: torch.dtype

    @property
    def templates_per_s(self) -> float:
        return self.templates / self.seconds

    @property
    def prompts_per_s(self) -> float:
        return self.templates * self.classes / self.seconds


def predictions_of(class_embeddings: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    return torch.stack([(features @ e.float().T).argmax(dim=-1) for e in class_embeddings])


def per_template_step(padding: str):
    """One template at a time, fp32, no cache: the authors' evaluation with padding="max_length"
    (77 tokens), or its first improvement with padding="longest"."""

    def step(encoder: ClipEncoder, templates: list[str], names: list[str]) -> list[torch.Tensor]:
        embeddings = []
        for template in templates:
            batch = encoder.tokenizer([fill(template, n) for n in names], padding=padding, max_length=77, return_tensors="pt")
            with torch.inference_mode():
                out = encoder.model.get_text_features(**batch)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            embeddings.append(torch.nn.functional.normalize(out, dim=-1))
        return embeddings

    return step


def batched_step(encoder: ClipEncoder, templates: list[str], names: list[str]) -> list[torch.Tensor]:
    """All templates' prompts in one encoder call, length-sorted chunks, no prefix sharing."""
    embeddings = encoder.encode_text([fill(t, n) for t in templates for n in names])
    return list(embeddings.reshape(len(templates), len(names), -1))


def scorer_path_step(encoder: ClipEncoder, templates: list[str], names: list[str]) -> list[torch.Tensor]:
    """The scorer's encoder path: batched, and each template's prefix computed once."""
    prompts = [fill(t, n) for t in templates for n in names]
    prefixes = [t.split("{}", 1)[0] for t in templates for _ in names]
    return list(encoder.encode_text(prompts, prefixes).reshape(len(templates), len(names), -1))


# Tokens each step runs through the text tower (padding included), counted
# outside the timed region: the FLOP/s column's numerator.

def padded_tokens(padding: str):
    def count(encoder: ClipEncoder, templates: list[str], names: list[str]) -> int:
        return sum(encoder.tokenizer([fill(t, n) for n in names], padding=padding, max_length=77,
                                     return_tensors="pt")["input_ids"].numel() for t in templates)

    return count


def sorted_chunk_tokens(encoder: ClipEncoder, templates: list[str], names: list[str]) -> int:
    lengths = sorted(encoder.token_lengths([fill(t, n) for t in templates for n in names]))
    chunk = CHUNK_PROMPTS
    return sum(lengths[min(i + chunk, len(lengths)) - 1] * len(lengths[i : i + chunk]) for i in range(0, len(lengths), chunk))


def shared_prefix_tokens(encoder: ClipEncoder, templates: list[str], names: list[str]) -> int:
    """Each template's prefix once, plus every prompt's tokens after its prefix."""
    prefix_length = {t: len(encoder.tokenizer(t.split("{}", 1)[0])["input_ids"]) - 1 for t in templates}
    suffixes = sum(max(1, n - prefix_length[t]) for t in templates
                   for n in encoder.token_lengths([fill(t, name) for name in names]))
    return sum(prefix_length.values()) + suffixes


def int8_encoder(encoder: ClipEncoder) -> ClipEncoder:
    """Dynamic int8 quantization of the text tower's linear layers (CPU)."""
    quantized = torch.ao.quantization.quantize_dynamic(encoder.model, {torch.nn.Linear}, dtype=torch.qint8)
    return ClipEncoder(encoder.name, quantized, encoder.tokenizer, None, encoder.device, encoder.dtype)


def run_step(name, step: Callable, tokens: Callable, encoder, templates, names, features) -> StepResult:
    reset_peak_rss()
    started = time.perf_counter()
    embeddings = step(encoder, templates, names)
    seconds = time.perf_counter() - started
    rss = peak_rss_mib()
    return StepResult(name, len(templates), len(names), seconds, tokens(encoder, templates, names),
                      predictions_of(embeddings, features), rss, encoder.dtype)


def cached_repeat_step(encoder: ClipEncoder, templates: list[str], names: list[str], features, labels) -> StepResult:
    """The whole TemplateScorer.score call for templates already in the text cache."""

    async def score_twice() -> float:
        batcher = TextEncodeBatcher(encoder.encode_text, 4096, 0.0, 10**7)
        batcher.start()
        scorer = TemplateScorer(encoder, batcher, TextEmbeddingCache(2**34), 1024)
        dataset = Dataset("bench", tuple(names), (), ())
        task = Task("bench", dataset, 1, 1, {})
        split = SplitFeatures(features.to(encoder.dtype), labels)
        await scorer.score(task, "train", split, templates)
        reset_peak_rss()
        started = time.perf_counter()
        await scorer.score(task, "train", split, templates)
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    seconds = asyncio.run(score_twice())
    return StepResult("+ text cache hit (whole score call)", len(templates), len(names), seconds, 0, torch.empty(0),
                      peak_rss_mib(), encoder.dtype)


def agreement(step: StepResult, baseline: StepResult) -> str:
    if step.predictions.numel() == 0:
        return "n/a"
    shared = min(len(step.predictions), len(baseline.predictions))
    same = (step.predictions[:shared] == baseline.predictions[:shared]).float().mean().item()
    return f"{100 * same:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--templates", type=int, default=64, help="templates scored by the fast steps")
    parser.add_argument("--max-prompts", type=int, default=8000,
                        help="fewer templates for many classes, so each step encodes at most this many prompts")
    parser.add_argument("--baseline-templates", type=int, default=4,
                        help="templates scored by the slow steps (their rate is per template; fewer keeps the run short)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    names_all = class_names(max(args.classes))
    tokenizer = word_level_tokenizer(TEMPLATES + names_all)
    fp32 = build_encoder(tokenizer)
    bf16 = build_encoder(tokenizer, torch.bfloat16)
    int8 = int8_encoder(fp32)
    peaks = {torch.float32: matmul_peak_flops(torch.float32), torch.bfloat16: matmul_peak_flops(torch.bfloat16)}

    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"matmul peak fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s.",
        "",
        "| classes | step | templates/s | class prompts/s | vs baseline | GFLOP/s (of matmul peak) | peak RSS MiB | predictions = baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count in args.classes:
        names = names_all[:count]
        features, labels = image_features(IMAGES, fp32.model.config.projection_dim, count)
        templates = TEMPLATES[: max(1, min(args.templates, args.max_prompts // count))]
        slow = templates[: args.baseline_templates]
        mean_tokens = sum(fp32.token_lengths([fill(t, n) for t in templates for n in names])) / (len(templates) * count)
        steps = [
            ("baseline: per template, pad 77, fp32", per_template_step("max_length"), padded_tokens("max_length"), fp32, slow),
            ("+ pad to longest", per_template_step("longest"), padded_tokens("longest"), fp32, slow),
            ("+ all templates batched, length-sorted", batched_step, sorted_chunk_tokens, fp32, templates),
            ("+ shared template prefix (scorer default, fp32)", scorer_path_step, shared_prefix_tokens, fp32, templates),
            ("+ bf16 weights (scorer --dtype bfloat16)", scorer_path_step, shared_prefix_tokens, bf16, templates),
            ("+ int8 dynamic quantization", scorer_path_step, shared_prefix_tokens, int8, templates),
        ]
        results = []
        for name, step, tokens, encoder, chosen in tqdm(steps, desc=f"{count} classes", unit="step"):
            results.append(run_step(name, step, tokens, encoder, chosen, names, features))
        results.append(cached_repeat_step(fp32, templates, names, features, labels))
        baseline = results[0]
        for result in results:
            flops_per_token = text_tower_flops_per_token(fp32, mean_tokens)
            gflops = result.executed_tokens * flops_per_token / result.seconds / 1e9
            peak = peaks.get(result.dtype, peaks[torch.float32]) / 1e9
            flops_cell = f"{gflops:.0f} ({100 * gflops / peak:.0f}%)" if result.executed_tokens else "n/a"
            lines.append(
                f"| {count} | {result.name} | {result.templates_per_s:.2f} | {result.prompts_per_s:.0f} | "
                f"{result.templates_per_s / baseline.templates_per_s:.1f}x | {flops_cell} | {result.peak_rss_mib:.0f} | "
                f"{agreement(result, baseline)} |"
            )
        lines.append(f"| {count} | (mean prompt length {mean_tokens:.1f} tokens; {IMAGES} images) | | | | | | |")
    write_table(args.out / "text_encoder.md", lines)


if __name__ == "__main__":
    main()
