"""Text-encoder scoring speed: the authors' baseline against the scorer's fast path.

Every step is run in this process on the same model, templates and image
features, and reported as a ratio to the baseline measured here. Each step also
checks that its argmax predictions equal the baseline's on every
(template, image) pair it shares with the baseline. FLOPs are counted by
torch.utils.flop_counter in a separate, untimed run of the same step.

    python -m bench.text_encoder [--classes 100 1000] [--templates 64] [--device cpu|cuda] [--out bench/results]

On a GPU (`--device cuda`) the CPU-only steps (oneDNN, int8) are left out, the
bf16 step is the scorer's GPU default, and memory is the device's peak
allocation. (Written without a GPU at hand: the CUDA path has not run yet.)
"""

from __future__ import annotations

import asyncio
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula
from tqdm import tqdm
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from bench.report import write_table
from bench.workload import TEMPLATES, class_names, image_features
from optimizer_service.seeds import BUILTIN_TEMPLATES
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.templates import fill
from scorer_service.batcher import TextEncodeBatcher
from scorer_service.cpu_kernels import use_onednn_kernels
from scorer_service.datasets import Dataset, Task
from scorer_service.factory import load_clip
from scorer_service.features import SplitFeatures
from scorer_service.model import ClipEncoder
from scorer_service.scoring import Candidates, TemplateScorer, TextEmbeddingCache
from scorer_service.tokenizer import PromptTokenizer
from testbed.random_clip import SHAPES
from testbed.tokenizer import clip_tokenizer
from testbed.train import CLASS_NAMES, ensure_model, full_test_features

IMAGES = 1000
CPU = torch.device("cpu")
# A benchmarked step: (encoder, templates, class names) -> each template's class embeddings.
Step = Callable[[ClipEncoder, list[str], list[str]], list[torch.Tensor]]


def build_encoder(
    tokenizer: CLIPTokenizer, dtype: torch.dtype = torch.float32, onednn: bool = False, device: torch.device = CPU
) -> ClipEncoder:
    """A ViT-B/32-shaped CLIP (random weights) wrapped as the scorer wraps a checkpoint."""
    shape = SHAPES["vit-b-32"]
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": shape.text_width,
            "intermediate_size": 4 * shape.text_width,
            "num_hidden_layers": shape.text_layers,
            "num_attention_heads": shape.text_heads,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },  # the vision tower is not benchmarked
        projection_dim=shape.projection_dim,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval().to(device, dtype)
    if onednn and not use_onednn_kernels(model):
        raise SystemExit("oneDNN's fp32 linear is unavailable or not fp32 here; see scorer_service/cpu_kernels.py")
    return ClipEncoder("random ViT-B/32 text tower", model, PromptTokenizer(tokenizer, 77), None, device, dtype)


# torch.utils.flop_counter knows aten's matmuls; these two CPU kernels it does not.


@register_flop_formula(torch.ops.mkldnn._linear_pointwise)
def _onednn_linear_flops(x_shape: Sequence[int], w_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_attention_flops(q_shape: Sequence[int], k_shape: Sequence[int], *args: object, **kwargs: object) -> int:
    batch, heads, queries, dim = q_shape
    return 4 * batch * heads * queries * k_shape[-2] * dim  # scores and weighted sum, masked ones included


def count_flops(step: Step, encoder: ClipEncoder, templates: list[str], names: list[str]) -> int:
    with FlopCounterMode(display=False) as counter:
        step(encoder, templates, names)
    return int(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(
    matmul: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device = CPU,
    size: int = 2048,
    seconds: float = 2.0,
) -> float:
    size = size * 4 if device.type == "cuda" else size
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    matmul(a, b)
    synchronize(device)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        matmul(a, b)
        count += 1
        synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started)


def onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    product: torch.Tensor = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return product


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process on CPU; peak allocated device memory on GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
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
    flops: int
    predictions: torch.Tensor  # [templates, images]
    peak_memory_mib: float
    matmul_peak: float | None  # FLOP/s of the dtype's measured matmul peak; None for int8

    @property
    def templates_per_s(self) -> float:
        return self.templates / self.seconds

    @property
    def prompts_per_s(self) -> float:
        return self.templates * self.classes / self.seconds


def predictions_of(class_embeddings: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    return torch.stack([(features.to(e.device) @ e.float().T).argmax(dim=-1).cpu() for e in class_embeddings])


def per_template_step(padding: str) -> Step:
    """One template at a time, fp32, no cache: the authors' evaluation with padding="max_length"
    (77 tokens), or its first improvement with padding="longest"."""

    def step(encoder: ClipEncoder, templates: list[str], names: list[str]) -> list[torch.Tensor]:
        embeddings = []
        for template in templates:
            batch = encoder.tokenizer.hf(
                [fill(template, n) for n in names], padding=padding, max_length=77, return_tensors="pt"
            )
            with torch.inference_mode():
                out = cast(CLIPModel, encoder.model).get_text_features(**batch.to(encoder.device))  # the testbed's
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


def int8_encoder(encoder: ClipEncoder) -> ClipEncoder:
    """Dynamic int8 quantization of the text tower's linear layers (CPU)."""
    quantized = torch.ao.quantization.quantize_dynamic(encoder.model, {torch.nn.Linear}, dtype=torch.qint8)
    return ClipEncoder(
        encoder.name, quantized, encoder.tokenizer, encoder.image_processor, encoder.device, encoder.dtype
    )


def run_step(
    name: str,
    step: Step,
    encoder: ClipEncoder,
    templates: list[str],
    names: list[str],
    features: torch.Tensor,
    flops: int,
    peak: float | None,
) -> StepResult:
    reset_peak_memory(encoder.device)
    synchronize(encoder.device)
    started = time.perf_counter()
    embeddings = step(encoder, templates, names)
    synchronize(encoder.device)
    seconds = time.perf_counter() - started
    memory = peak_memory_mib(encoder.device)
    return StepResult(
        name, len(templates), len(names), seconds, flops, predictions_of(embeddings, features), memory, peak
    )


def score_call_seconds(
    encoder: ClipEncoder,
    templates: list[str],
    names: list[str],
    features: torch.Tensor,
    labels: torch.Tensor,
    cached: bool,
) -> float:
    """One whole TemplateScorer.score_candidates call (check, tokenize, encode, count), timed; `cached`: after an
    untimed call that puts the templates' prompts in the text cache, else on an empty cache."""

    async def score() -> float:
        batcher = TextEncodeBatcher(encoder.encode_ids, 4096, 0.0, 10**7)
        batcher.start()
        scorer = TemplateScorer(encoder, batcher, TextEmbeddingCache(2**34), 1024)
        task = Task("bench", Dataset("bench", tuple(names), (), ()), 1, 1, {})
        split = SplitFeatures(features.to(encoder.device, encoder.dtype), labels.to(encoder.device))
        if cached:
            await scorer.score_candidates(task, "train", split, Candidates(templates))
        reset_peak_memory(encoder.device)
        started = time.perf_counter()
        await scorer.score_candidates(task, "train", split, Candidates(templates))
        elapsed = time.perf_counter() - started
        scorer.close()
        await batcher.close()
        return elapsed

    return asyncio.run(score())


def cached_repeat_step(
    encoder: ClipEncoder, templates: list[str], names: list[str], features: torch.Tensor, labels: torch.Tensor
) -> StepResult:
    """The whole TemplateScorer.score_candidates call for templates already in the text cache."""
    seconds = score_call_seconds(encoder, templates, names, features, labels, cached=True)
    return StepResult(
        "+ text cache hit (whole score call)",
        len(templates),
        len(names),
        seconds,
        0,
        torch.empty(0),
        peak_memory_mib(encoder.device),
        None,
    )


def tokenize_once_table(
    encoder: ClipEncoder, machine: str, templates: list[str], names: list[str], repeats: int = 3
) -> list[str]:
    """The scorer's text path for fresh templates, as it was (the length check tokenized every prompt, then the
    encoder tokenized it again) against tokenize-once (the check's ids go to the encoder), alternating in this
    process so load drifts hit both; then the whole fresh score call, and encode_text alone for comparison."""
    prompts = [fill(t, n) for t in templates for n in names]
    prefixes = [t.split("{}", 1)[0] for t in templates for _ in names]
    tokenizer = encoder.tokenizer

    def twice() -> None:
        tokenizer.lengths(prompts)
        encoder.encode_text(prompts, prefixes)

    def once() -> None:
        encoder.encode_ids(tokenizer.token_ids(prompts), prefixes)

    def tokenize() -> None:
        tokenizer.token_ids(prompts)

    timings: dict[str, list[float]] = {"twice": [], "once": [], "tokenize": [], "score": [], "encode_text": []}
    features, labels = image_features(IMAGES, SHAPES["vit-b-32"].projection_dim, len(names))
    once()  # warm up kernels and the tokenizer
    for _ in range(repeats):
        for name, run in (("twice", twice), ("once", once), ("tokenize", tokenize)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
        timings["score"].append(score_call_seconds(encoder, templates, names, features, labels, cached=False))
        started = time.perf_counter()
        encoder.encode_text(prompts, prefixes)
        timings["encode_text"].append(time.perf_counter() - started)
    per = len(templates)

    def cell(name: str) -> str:
        values = sorted(timings[name])
        return f"{values[len(values) // 2] / per:.3f} ({values[0] / per:.3f}-{values[-1] / per:.3f})"

    ratio = sorted(t / o for t, o in zip(timings["twice"], timings["once"], strict=True))
    return [
        "",
        f"Tokenize once: {len(templates)} fresh templates x {len(names)} classes, ViT-B/32-shaped text tower (random "
        f"weights), OpenAI CLIP's real BPE; {machine}; {repeats} runs each, alternating; seconds per template, median "
        "(min-max).",
        "",
        "| path | s per template | old path / this path |",
        "|---|---|---|",
        f"| old: length check tokenizes, encoder tokenizes again | {cell('twice')} | 1.00 |",
        f"| tokenize once: the check's ids go to the encoder | {cell('once')} | "
        f"{ratio[len(ratio) // 2]:.3f} ({ratio[0]:.3f}-{ratio[-1]:.3f}) |",
        f"| (one tokenization of every prompt alone) | {cell('tokenize')} | |",
        f"| whole fresh score call in process (TemplateScorer, batcher, accuracy) | {cell('score')} | |",
        f"| encode_text alone (tokenizes once, encodes) | {cell('encode_text')} | |",
    ]


def tokenize_once_section(tokenizer: CLIPTokenizer, device: torch.device) -> list[str]:
    """The tokenize-once table on the scorer's default encoder for the device (oneDNN kernels on CPU)."""
    encoder = build_encoder(tokenizer, onednn=device.type == "cpu", device=device)
    return tokenize_once_table(encoder, machine_name(device), TEMPLATES[:16], class_names(100))


def machine_name(device: torch.device) -> str:
    """The CPU model (or GPU name), threads and torch version, as every table states them."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def agreement(step: StepResult, baseline: StepResult) -> str:
    if step.predictions.numel() == 0:
        return "n/a"
    shared = min(len(step.predictions), len(baseline.predictions))
    same = (step.predictions[:shared] == baseline.predictions[:shared]).float().mean().item()
    return f"{100 * same:.2f}%"


def trained_model_agreement(model_dir: Path) -> list[str]:
    """bf16 and int8 against fp32 on the trained testbed model, whose logits are not near-ties.

    On random weights every class prompt embeds almost alike, so tiny numeric
    differences flip argmaxes; a trained model shows what reduced precision does
    to real predictions. Scored: every built-in template x the full Fashion-MNIST
    test split, image features computed in each row's dtype as the scorer does.
    """
    templates = list(BUILTIN_TEMPLATES)
    fp32 = load_clip(str(model_dir), device="cpu", dtype="float32", cpu_matmul="torch")
    rows = [
        ("fp32 (reference)", fp32),
        ("bf16 (scorer --dtype bfloat16)", load_clip(str(model_dir), "cpu", "bfloat16", "torch")),
        ("int8 dynamic quantization", int8_encoder(fp32)),
    ]
    results: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for name, encoder in rows:
        features, labels[name] = full_test_features(encoder)
        embeddings = scorer_path_step(encoder, templates, list(CLASS_NAMES))
        results[name] = predictions_of(embeddings, features.float())
    reference, target = results[rows[0][0]], labels[rows[0][0]]
    lines = [
        "",
        f"Trained testbed model ({model_dir.name}: a small CLIP trained on this machine, not CLIP): "
        f"{len(templates)} built-in templates x {len(target)} Fashion-MNIST test images.",
        "",
        "| dtype | predictions = fp32 | mean test accuracy | largest accuracy change of a template |",
        "|---|---|---|---|",
    ]
    reference_accuracy = (reference == target).float().mean(dim=1)
    for name, predictions in results.items():
        accuracy = (predictions == target).float().mean(dim=1)
        lines.append(
            f"| {name} | {100 * (predictions == reference).float().mean().item():.2f}% | "
            f"{100 * accuracy.mean().item():.2f}% | "
            f"{100 * (accuracy - reference_accuracy).abs().max().item():.2f} points |"
        )
    return lines


def _trained_model(ref: str) -> Path:
    return ensure_model() if ref == "testbed" else Path(ref)


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--templates", type=int, default=64, help="templates scored by the fast steps")
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=8000,
        help="fewer templates for many classes, so each step encodes at most this many prompts",
    )
    parser.add_argument(
        "--baseline-templates",
        type=int,
        default=4,
        help="templates scored by the slow steps (their rate is per template; fewer keeps the run short)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for a GPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--trained-model",
        default="testbed",
        help="checkpoint dir for the bf16/int8 agreement rows; 'testbed' trains or loads the testbed "
        "model, 'none' skips them",
    )
    parser.add_argument(
        "--tokenize-once-only",
        action="store_true",
        help="only the tokenize-once table: 16 fresh templates x 100 classes (bench/results/tokenize_once.md)",
    )
    parser.add_argument(
        "--trained-model-only",
        action="store_true",
        help="only the trained model's agreement rows (bench/results/dtype_agreement.md)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"

    if args.trained_model_only:
        write_table(args.out / "dtype_agreement.md", trained_model_agreement(_trained_model(args.trained_model)))
        return
    tokenizer = clip_tokenizer()
    if args.tokenize_once_only:
        write_table(args.out / "tokenize_once.md", tokenize_once_section(tokenizer, device))
        return
    names_all = class_names(max(args.classes))
    fp32 = build_encoder(tokenizer, device=device)
    bf16 = build_encoder(tokenizer, torch.bfloat16, device=device)
    torch_peak = matmul_peak_flops(torch.matmul, torch.float32, device)
    bf16_peak = matmul_peak_flops(torch.matmul, torch.bfloat16, device)
    int8: ClipEncoder | None = None  # CPU only
    machine = machine_name(device)
    if on_gpu:
        default = fp32  # what counts FLOPs and serves the cached step
        fp32_peak = torch_peak
        peaks = f"measured matmul peak fp32 {torch_peak / 1e9:.0f} GFLOP/s, bf16 {bf16_peak / 1e9:.0f} GFLOP/s."
    else:
        default = build_encoder(tokenizer, onednn=True)
        int8 = int8_encoder(fp32)
        onednn_peak = matmul_peak_flops(onednn_matmul, torch.float32)
        fp32_peak = max(torch_peak, onednn_peak)
        peaks = (
            f"measured matmul peak fp32 {torch_peak / 1e9:.0f} GFLOP/s with torch's kernels and "
            f"{onednn_peak / 1e9:.0f} with oneDNN's, bf16 {bf16_peak / 1e9:.0f} GFLOP/s."
        )

    lines = [
        f"Machine: {machine}; {peaks} The FLOP/s column is against the faster fp32 peak "
        "(bf16 rows: the bf16 peak; int8 rows: none measured).",
        "",
        f"| classes | step | templates/s | class prompts/s | vs baseline | GFLOP/s (of matmul peak) | "
        f"peak {'GPU memory' if on_gpu else 'RSS'} MiB | predictions = baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count in args.classes:
        names = names_all[:count]
        features, labels = image_features(IMAGES, SHAPES["vit-b-32"].projection_dim, count)
        templates = TEMPLATES[: max(1, min(args.templates, args.max_prompts // count))]
        slow = templates[: args.baseline_templates]
        mean_tokens = sum(fp32.tokenizer.lengths([fill(t, n) for t in templates for n in names])) / (
            len(templates) * count
        )
        pad_77, pad_longest = per_template_step("max_length"), per_template_step("longest")
        steps: list[tuple[str, Step, ClipEncoder, list[str], float | None]] = [
            ("baseline: per template, pad 77, fp32", pad_77, fp32, slow, fp32_peak),
            ("+ pad to longest", pad_longest, fp32, slow, fp32_peak),
            ("+ all templates batched, length-sorted", batched_step, fp32, templates, fp32_peak),
            (
                "+ shared template prefix, last layer on end-of-text only "
                f"({'scorer --dtype float32' if on_gpu else 'scorer --cpu-matmul torch'})",
                scorer_path_step,
                fp32,
                templates,
                fp32_peak,
            ),
        ]
        if int8 is None:  # on a GPU
            steps.append(("+ bf16 weights (scorer default on GPU)", scorer_path_step, bf16, templates, bf16_peak))
        else:
            steps += [
                (
                    "+ oneDNN fp32 kernels, MLP activation fused (scorer default on CPU)",
                    scorer_path_step,
                    default,
                    templates,
                    fp32_peak,
                ),
                ("+ bf16 weights (scorer --dtype bfloat16)", scorer_path_step, bf16, templates, bf16_peak),
                ("+ int8 dynamic quantization", scorer_path_step, int8, templates, None),
                ("reference: the baseline on oneDNN kernels", pad_77, default, slow, fp32_peak),
            ]
        flops: dict[tuple, int] = {}  # an algorithm's FLOPs do not depend on kernels or dtype
        results = []
        for name, step, encoder, chosen, peak in tqdm(steps, desc=f"{count} classes", unit="step"):
            key = (step, tuple(chosen))
            if key not in flops:
                flops[key] = count_flops(step, default, chosen, names)
            results.append(run_step(name, step, encoder, chosen, names, features, flops[key], peak))
        results.append(cached_repeat_step(bf16 if on_gpu else default, templates, names, features, labels))
        baseline = results[0]
        for result in results:
            gflops = result.flops / result.seconds / 1e9
            share = f" ({100 * gflops * 1e9 / result.matmul_peak:.0f}%)" if result.matmul_peak else ""
            flops_cell = f"{gflops:.0f}{share}" if result.flops else "n/a"
            lines.append(
                f"| {count} | {result.name} | {result.templates_per_s:.2f} | {result.prompts_per_s:.0f} | "
                f"{result.templates_per_s / baseline.templates_per_s:.1f}x | {flops_cell} | "
                f"{result.peak_memory_mib:.0f} | "
                f"{agreement(result, baseline)} |"
            )
        lines.append(f"| {count} | (mean prompt length {mean_tokens:.1f} tokens; {IMAGES} images) | | | | | | |")
    lines += tokenize_once_section(tokenizer, device)
    if args.trained_model != "none" and not on_gpu:
        lines += trained_model_agreement(_trained_model(args.trained_model))
    write_table(args.out / "text_encoder.md", lines)


if __name__ == "__main__":
    main()
