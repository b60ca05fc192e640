"""Every setting of the scorer, typed and validated once at start.

Each flag has an environment variable (SCORER_<FLAG>) as its default, so a
container sets env and a shell passes flags.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.paths import WritablePath
from promptclimb_common.serving_args import (
    EnvError,
    ServingConfig,
    add_serving_args,
    env_reader,
    flag_type,
    serving_settings,
)
from scorer_service.coop import COOP_DATASETS
from scorer_service.quota import redacted_url

# Kernels of fp32 linear layers on CPU (scorer_service/cpu_kernels.py). Named here, not imported from there:
# this module must load without torch, so that a bad flag or path fails in well under a second.
CPU_MATMULS = ("onednn", "torch")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class TaskSource:
    """A task given on the command line as ID=DIR (image folder) or ID=coop:NAME:DIR."""

    task_id: str
    root: Path
    coop_dataset: str = ""


@dataclass(frozen=True)
class ScorerConfig(ServingConfig):
    """The scorer's settings: the shared serving ones plus model, tasks and bounds."""

    port: int = 50051
    metrics_port: int | None = 9101
    anonymous_rights: frozenset[str] = frozenset({"score"})
    model: str = "openai/clip-vit-base-patch32"
    model_version: str = ""  # empty: the model's name and digest (model.ModelIdentity)
    tasks: tuple[TaskSource, ...] = ()
    shots: int = 1
    val_shots: int = 0  # 0: no val split
    seed: int = 1
    split_seed: int = 0
    test_fraction: float = 0.5
    device: str = "auto"
    dtype: str = "auto"
    cpu_matmul: str = "onednn"
    cache_dir: Path = Path(".cache/promptclimb/scorer")
    state_dir: Path = Path(".cache/promptclimb/scorer-state")
    quota_store: str = "sqlite"  # or redis://HOST:PORT/DB, shared by every replica (scorer_service/quota.py)
    max_candidates_per_request: int = 256
    max_templates_per_request: int = 256
    max_prompts_per_class: int = 32
    max_prompts_per_candidate: int = 8192
    max_prompts_per_request: int = 65536
    max_template_bytes: int = 1024
    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_prompts: int = 0  # 0: by device, see device.default_batch_prompts
    max_batch_delay_ms: float = 5.0
    max_queued_prompts: int = 200_000
    text_cache_bytes: int = 512 * 1024 * 1024
    image_batch_size: int = 64
    log_level: str = "INFO"
    allow_unauthenticated: bool = False  # serve a non-loopback --host without tokens (app.refuse_open_to_all)

    def writable_paths(self) -> tuple[WritablePath, ...]:
        """What the scorer writes: the image-feature cache and the state (the evaluation ledger)."""
        return (
            WritablePath("--cache-dir", "SCORER_CACHE_DIR", self.cache_dir),
            WritablePath("--state-dir", "SCORER_STATE_DIR", self.state_dir),
        )


_env = env_reader("SCORER")


def _task(text: str) -> TaskSource:
    task_id, sep, root = text.partition("=")
    if not sep or not task_id or not root:
        raise argparse.ArgumentTypeError(f"--task wants ID=DIR or ID=coop:NAME:DIR, got {text!r}")
    if root.startswith("coop:"):
        name, sep, folder = root.removeprefix("coop:").partition(":")
        if not sep or not folder or name not in COOP_DATASETS:
            raise argparse.ArgumentTypeError(
                f"--task {text!r}: a CoOp task is ID=coop:NAME:DIR with NAME one of {', '.join(COOP_DATASETS)}"
            )
        return TaskSource(task_id, Path(folder), name)
    return TaskSource(task_id, Path(root))


def build_parser(prog: str = "python -m scorer_service") -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description="Black-box CLIP scorer: templates in, accuracy out.")
    try:
        _add_args(p)
    except EnvError as err:
        p.error(str(err))
    return p


def _add_args(p: argparse.ArgumentParser) -> None:
    d = ScorerConfig()
    a = p.add_argument
    a("--model", default=_env("model", d.model), help="Hugging Face hub id or local directory of a CLIP checkpoint")
    a(
        "--model-version",
        default=_env("model_version", d.model_version),
        help="human-readable version of the model, reported with its digest in TaskInfo and every ScoreResponse "
        "(e.g. a release tag); default: the model's name and the digest's first 12 characters",
    )
    a(
        "--task",
        dest="tasks",
        action="append",
        type=_task,
        default=None,
        help="ID=DIR of an image-folder dataset, or ID=coop:NAME:DIR of a CoOp dataset folder (NAME: "
        f"{', '.join(COOP_DATASETS)}); repeatable (env SCORER_TASKS: comma-separated)",
    )
    a(
        "--shots",
        type=int,
        default=_env("shots", d.shots, int),
        help="K training images per class in the few-shot train split",
    )
    a(
        "--val-shots",
        type=int,
        default=_env("val_shots", d.val_shots, int),
        help="images per class in the few-shot val split (SPLIT_VAL), drawn after train and disjoint from it; "
        "0: no val split",
    )
    a("--seed", type=int, default=_env("seed", d.seed, int), help="seed of the few-shot sample")
    a(
        "--split-seed",
        type=int,
        default=_env("split_seed", d.split_seed, int),
        help="seed that splits a dataset without train/ and test/ folders",
    )
    a(
        "--test-fraction",
        type=float,
        default=_env("test_fraction", d.test_fraction, float),
        help="share of each class held out as test when a dataset has no test/ folder",
    )
    add_serving_args(
        p,
        _env,
        port=d.port,
        metrics_port=d.metrics_port,
        anonymous_rights=d.anonymous_rights,
        host=d.host,
        grace_seconds=d.grace_seconds,
    )
    a("--device", default=_env("device", d.device), help="auto, cpu, cuda or cuda:N")
    a(
        "--dtype",
        default=_env("dtype", d.dtype, Literal[DTYPES]),
        choices=DTYPES,
        help="auto: bfloat16 (or float16) on GPU, float32 on CPU",
    )
    a(
        "--cpu-matmul",
        default=_env("cpu_matmul", d.cpu_matmul, Literal[CPU_MATMULS]),
        choices=CPU_MATMULS,
        help="kernels of fp32 linear layers on CPU: onednn (AVX-512 also on AMD; checked to be fp32 at start) or "
        "torch's default (MKL)",
    )
    a("--cache-dir", type=Path, default=_env("cache_dir", d.cache_dir, Path), help="on-disk cache of image features")
    a(
        "--state-dir",
        type=Path,
        default=_env("state_dir", d.state_dir, Path),
        help="durable state: each token's count of evaluated templates (SQLite, with --quota-store sqlite)",
    )
    a(
        "--quota-store",
        default=_env("quota_store", d.quota_store),
        help="where rate limits and evaluation budgets live: sqlite (default; a file in --state-dir, right for one "
        "replica) or redis://[:PASSWORD@]HOST:PORT/DB (shared by every replica; atomic updates)",
    )
    a(
        "--max-candidates-per-request",
        type=int,
        default=_env("max_candidates_per_request", d.max_candidates_per_request, int),
        help="most candidates in one Score call: templates, ensembles and class prompt sets, empty ones included",
    )
    a(
        "--max-templates-per-request",
        type=int,
        default=_env("max_templates_per_request", d.max_templates_per_request, int),
        help="most templates in one Score call, every ensemble member included",
    )
    a(
        "--max-prompts-per-class",
        type=int,
        default=_env("max_prompts_per_class", d.max_prompts_per_class, int),
        help="most prompts of one class in a class prompt set",
    )
    a(
        "--max-prompts-per-candidate",
        type=int,
        default=_env("max_prompts_per_candidate", d.max_prompts_per_candidate, int),
        help="most prompts of one class prompt set, all classes together",
    )
    a(
        "--max-prompts-per-request",
        type=int,
        default=_env("max_prompts_per_request", d.max_prompts_per_request, int),
        help="most prompts of all class prompt sets of one Score call",
    )
    a(
        "--max-template-bytes",
        type=int,
        default=_env("max_template_bytes", d.max_template_bytes, int),
        help="most UTF-8 bytes of one template or class prompt (a longer one is that candidate's error)",
    )
    a("--max-message-bytes", type=int, default=_env("max_message_bytes", d.max_message_bytes, int))
    a(
        "--max-batch-prompts",
        type=int,
        default=_env("max_batch_prompts", d.max_batch_prompts, int),
        help="most class prompts the text encoder takes in one batch; 0 (default): 256 on CPU, where one encoder "
        "chunk already saturates the cores and larger batches only add wait, 4096 on GPU",
    )
    a(
        "--max-batch-delay-ms",
        type=float,
        default=_env("max_batch_delay_ms", d.max_batch_delay_ms, float),
        help="how long a batch waits for concurrent requests to join it",
    )
    a(
        "--max-queued-prompts",
        type=int,
        default=_env("max_queued_prompts", d.max_queued_prompts, int),
        help="prompts waiting for the encoder beyond which calls get RESOURCE_EXHAUSTED",
    )
    a(
        "--text-cache-bytes",
        type=int,
        default=_env("text_cache_bytes", d.text_cache_bytes, int),
        help="bound of the text-embedding LRU cache",
    )
    a("--image-batch-size", type=int, default=_env("image_batch_size", d.image_batch_size, int))
    a("--log-level", default=_env("log_level", d.log_level))
    a(
        "--allow-unauthenticated",
        type=flag_type(bool),
        nargs="?",
        const=True,
        default=_env("allow_unauthenticated", d.allow_unauthenticated, bool),
        help="serve a --host other than loopback without tokens (anyone who reaches it may score); without it such "
        "a scorer refuses to start",
    )


def parse_config(argv: list[str] | None = None, prog: str = "python -m scorer_service") -> ScorerConfig:
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    tasks = ns.tasks
    if tasks is None:
        env_tasks = os.environ.get("SCORER_TASKS", "")
        try:
            tasks = [_task(t) for t in env_tasks.split(",") if t.strip()]
        except argparse.ArgumentTypeError as err:
            parser.error(f"$SCORER_TASKS={env_tasks!r}: {err}")
    if not tasks:
        parser.error("at least one --task ID=DIR is required")
    if len({t.task_id for t in tasks}) != len(tasks):
        parser.error("task ids must be unique")
    if ns.shots < 1:
        parser.error("--shots must be at least 1")
    if ns.val_shots < 0:
        parser.error("--val-shots must be 0 (no val split) or more")
    if not 0 < ns.test_fraction < 1:
        parser.error("--test-fraction must be between 0 and 1")
    if ns.quota_store != "sqlite" and not ns.quota_store.startswith(("redis://", "rediss://", "unix://")):
        parser.error(f"--quota-store wants sqlite or a redis:// URL, got {redacted_url(ns.quota_store)!r}")
    if ns.max_batch_prompts < 0:
        parser.error("--max-batch-prompts must be 0 (by device) or positive")
    for name in (
        "max_candidates_per_request",
        "max_templates_per_request",
        "max_prompts_per_class",
        "max_prompts_per_candidate",
        "max_prompts_per_request",
        "max_template_bytes",
        "max_message_bytes",
        "max_queued_prompts",
        "image_batch_size",
    ):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return ScorerConfig(
        **serving_settings(parser, ns),
        model=ns.model,
        model_version=ns.model_version,
        tasks=tuple(tasks),
        shots=ns.shots,
        val_shots=ns.val_shots,
        seed=ns.seed,
        split_seed=ns.split_seed,
        test_fraction=ns.test_fraction,
        device=ns.device,
        dtype=ns.dtype,
        cpu_matmul=ns.cpu_matmul,
        cache_dir=ns.cache_dir,
        state_dir=ns.state_dir,
        quota_store=ns.quota_store,
        max_candidates_per_request=ns.max_candidates_per_request,
        max_templates_per_request=ns.max_templates_per_request,
        max_prompts_per_class=ns.max_prompts_per_class,
        max_prompts_per_candidate=ns.max_prompts_per_candidate,
        max_prompts_per_request=ns.max_prompts_per_request,
        max_template_bytes=ns.max_template_bytes,
        max_message_bytes=ns.max_message_bytes,
        max_batch_prompts=ns.max_batch_prompts,
        max_batch_delay_ms=ns.max_batch_delay_ms,
        max_queued_prompts=ns.max_queued_prompts,
        text_cache_bytes=ns.text_cache_bytes,
        image_batch_size=ns.image_batch_size,
        log_level=ns.log_level,
        allow_unauthenticated=ns.allow_unauthenticated,
    )
