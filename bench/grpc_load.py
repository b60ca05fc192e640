"""Concurrent clients against the real gRPC scorer, with and without dynamic batching.

The scorer runs as its own process with a ViT-B/32-shaped random CLIP; each
client sends Score calls of fresh templates (so every call reaches the text
encoder) for a fixed time. "Without batching" caps an encoder batch at one
call's prompts, so concurrent calls queue one by one.

    python -m bench.grpc_load [--seconds 15] [--clients 1 4 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.report import write_table
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from scorer_service.random_clip import build_random_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import write_image_folder  # noqa: E402
from procs import start_scorer, stop_process  # noqa: E402

CLASSES = tuple(f"class number {i}" for i in range(20))
TEMPLATES_PER_CALL = 2


async def client(stub, deadline: float, counter: itertools.count, latencies: list[float], errors: list[str]) -> None:
    while time.perf_counter() < deadline:
        templates = [f"a photo {next(counter)} of a {{}}." for _ in range(TEMPLATES_PER_CALL)]
        started = time.perf_counter()
        try:
            await stub.Score(scorer_pb2.ScoreRequest(task_id="bench", templates=templates), timeout=60)
            latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as err:
            errors.append(err.code().name)


async def drive(address: str, clients: int, seconds: float, counter: itertools.count) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        await stub.Score(scorer_pb2.ScoreRequest(task_id="bench", templates=["warm-up {}"]))
        started = time.perf_counter()
        await asyncio.gather(*(client(stub, started + seconds, counter, latencies, errors) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "calls_per_s": len(latencies) / elapsed,
        "templates_per_s": len(latencies) * TEMPLATES_PER_CALL / elapsed,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
        "errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="promptclimb-bench-"))
    model = build_random_clip(work / "model", "vit-b-32")
    data = write_image_folder(work / "data", classes=CLASSES, per_class=2, size=32)
    prompts_per_call = TEMPLATES_PER_CALL * len(CLASSES)
    settings = {
        "dynamic batching (5 ms window)": ["--max-batch-delay-ms", "5"],
        "no batching (one call per encoder batch)": ["--max-batch-delay-ms", "0", "--max-batch-prompts", str(prompts_per_call)],
    }
    counter = itertools.count()
    rows = []
    for name, flags in settings.items():
        process, address = start_scorer(model, {"bench": data}, work / "cache", work / "scorer.log", *flags)
        try:
            for clients in args.clients:
                result = asyncio.run(drive(address, clients, args.seconds, counter))
                rows.append((name, clients, result))
                print(name, clients, result, flush=True)
        finally:
            stop_process(process)
    base = {clients: r["templates_per_s"] for name, clients, r in rows if name.startswith("no batching")}
    lines = [
        f"Scorer process with a ViT-B/32-shaped random CLIP, {len(CLASSES)} classes, {TEMPLATES_PER_CALL} fresh templates "
        f"per call, {args.seconds:.0f} s per row.",
        "",
        "| setting | clients | calls/s | templates/s | vs no batching | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, clients, r in rows:
        lines.append(f"| {name} | {clients} | {r['calls_per_s']:.1f} | {r['templates_per_s']:.1f} | "
                     f"{r['templates_per_s'] / base[clients]:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    write_table(args.out / "grpc_load.md", lines)


if __name__ == "__main__":
    main()
