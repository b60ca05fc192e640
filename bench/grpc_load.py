"""Concurrent clients against the real gRPC scorer, with and without dynamic batching.

The scorer runs as its own process with a ViT-B/32-shaped random CLIP; each
client sends Score calls of fresh templates (so every call reaches the text
encoder) for a fixed time. "Without batching" caps an encoder batch at one
call's prompts, so concurrent calls queue one by one. Two call shapes are
driven: small calls (one template on a 10-class task, as a client that scores
each proposal on its own sends) and larger ones (4 templates on 50 classes).

    python -m bench.grpc_load [--seconds 15] [--clients 1 4 16]
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.report import write_table
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.cli_help import ArgumentParser
from testbed.random_clip import build_random_clip
from tests.fixtures import write_image_folder
from tests.procs import start_scorer, stop_process


@dataclass(frozen=True)
class CallShape:
    task_id: str
    classes: int
    templates_per_call: int

    @property
    def prompts_per_call(self) -> int:
        return self.classes * self.templates_per_call


CALL_SHAPES = (CallShape("small", 10, 1), CallShape("large", 50, 4))


async def client(
    stub: scorer_pb2_grpc.ScorerAsyncStub,
    shape: CallShape,
    deadline: float,
    counter: itertools.count[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    while time.perf_counter() < deadline:
        templates = [f"a photo {next(counter)} of a {{}}." for _ in range(shape.templates_per_call)]
        started = time.perf_counter()
        try:
            await stub.Score(scorer_pb2.ScoreRequest(task_id=shape.task_id, templates=templates), timeout=60)
            latencies.append(time.perf_counter() - started)
        except grpc.aio.AioRpcError as err:
            errors.append(err.code().name)


async def drive(address: str, shape: CallShape, clients: int, seconds: float, counter: itertools.count) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        await stub.Score(scorer_pb2.ScoreRequest(task_id=shape.task_id, templates=["warm-up {}"]))
        started = time.perf_counter()
        await asyncio.gather(
            *(client(stub, shape, started + seconds, counter, latencies, errors) for _ in range(clients))
        )
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "calls_per_s": len(latencies) / elapsed,
        "templates_per_s": len(latencies) * shape.templates_per_call / elapsed,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
        "errors": len(errors),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="promptclimb-bench-"))
    model = build_random_clip(work / "model", "vit-b-32")
    tasks = {
        shape.task_id: write_image_folder(
            work / shape.task_id, classes=tuple(f"class number {i}" for i in range(shape.classes)), per_class=2, size=32
        )
        for shape in CALL_SHAPES
    }
    counter = itertools.count()
    rows = []
    for shape in CALL_SHAPES:
        settings = {
            "dynamic batching (5 ms window)": ["--max-batch-delay-ms", "5"],
            "no batching": ["--max-batch-delay-ms", "0", "--max-batch-prompts", str(shape.prompts_per_call)],
        }
        for name, flags in settings.items():
            process, address = start_scorer(model, tasks, work / "cache", work / "scorer.log", *flags)
            try:
                for clients in args.clients:
                    result = asyncio.run(drive(address, shape, clients, args.seconds, counter))
                    rows.append((shape, name, clients, result))
                    print(shape.task_id, name, clients, result, flush=True)
            finally:
                stop_process(process)
    unbatched = {(shape, clients): r["templates_per_s"] for shape, name, clients, r in rows if name == "no batching"}
    lines = [
        f"Scorer process with a ViT-B/32-shaped random CLIP on CPU (defaults: fp32, oneDNN kernels), fresh templates "
        f"in every call, {args.seconds:.0f} s per row.",
        "",
        "| call | setting | clients | calls/s | templates/s | vs no batching | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, name, clients, r in rows:
        call = f"{shape.templates_per_call} template(s) x {shape.classes} classes"
        lines.append(
            f"| {call} | {name} | {clients} | {r['calls_per_s']:.1f} | {r['templates_per_s']:.1f} | "
            f"{r['templates_per_s'] / unbatched[shape, clients]:.2f}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['errors']} |"
        )
    write_table(args.out / "grpc_load.md", lines)


if __name__ == "__main__":
    main()
