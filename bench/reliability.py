"""`make reliability`: the figures behind the README's "Guarantees".

1. Load: 64 concurrent clients score for 60 s against the real scorer (tiny
   model), half repeated (cached) and half fresh templates, with a small
   text cache so that eviction runs; throughput, p50/p99 latency, errors, and
   the scorer's resident memory after warm-up and at the end.
2. Fairness (bench/fairness.py): one hostile owner (streams, runs, scoring)
   against one normal owner on the same services; the normal owner's success
   rate and p99 latency alone and beside the hostile one.
3. The fault and security suites, with the reliability settings: five SIGKILLs
   of the optimizer in one run, a scorer restart mid-run, the LLM fault matrix,
   10,000+ fuzzed requests over every RPC of both services, and the security
   tests, the multi-tenant tests (ownership, the test right, the error model,
   nothing charged for refusals) and the shared quota: two scorer replicas on
   one real redis-server, many clients spending one token's budget. Each
   suite's pass/fail count comes from pytest; the figures they name
   (candidates lost, calls repeated, crashes, undocumented statuses,
   over-spend) are what those tests assert to be zero, and the shared-quota
   test reports its own (replicas, clients, budget, scored, over-spend).

    python -m bench.reliability [--seconds 60] [--clients 64] [--fuzz-examples 3400] [--fairness-seconds 20]
    python -m bench.reliability --fairness-only    # the fairness row alone: fairness.md
    python -m bench.reliability --soak --seconds 600   # the load alone, longer: soak.md
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import grpc

from bench.fairness import fairness_row
from bench.report import write_table
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb_common.cli_help import ArgumentParser
from promptclimb_common.processes import REPO
from testbed.random_clip import build_random_clip
from tests.fixtures import write_image_folder
from tests.procs import scorer_service, scraped, stop_process

CACHED = [f"a cached template number {i} of a {{}}." for i in range(32)]
SUITES = {
    "kill and resume (5 SIGKILLs of the optimizer in one run)": ["tests/optimizer/test_kill.py"],
    "scorer restart mid-run": ["tests/optimizer/test_scorer_restart.py"],
    "LLM fault matrix": [
        "tests/optimizer/test_llm.py",
        "tests/optimizer/test_service.py",
        "-k",
        "fault or skipped or stays_down or llm",
    ],
    "fuzzing, every RPC of both services": [
        "tests/scorer/test_fuzz.py",
        "tests/optimizer/test_fuzz.py",
        "--hypothesis-show-statistics",
    ],
    "security (auth, rights, quotas, TLS/mTLS, tokens never logged)": [
        "tests/scorer/test_service.py",
        "tests/scorer/test_quota.py",
        "tests/scorer/test_tls.py",
        "tests/optimizer/test_tls.py",
        "tests/optimizer/test_service.py",
        "-k",
        "auth or right or rate_limit or budget or tls or bearer",
    ],
    "multi-tenant (run ownership, the test right, LLM spend bounds, error model, no charge for refusals)": [
        "tests/optimizer/test_multitenant.py",
        "tests/scorer/test_error_model.py",
        "tests/scorer/test_process.py::test_tokens_rotate_on_sighup_and_a_broken_file_keeps_the_current_ones",
        "tests/scorer/test_process.py::test_a_token_file_with_a_repeated_token_is_refused_at_start",
    ],
    "shared quota: 2 scorer replicas, one redis-server": ["tests/scorer/test_shared_quota.py"],
}
GOALS = {
    "kill and resume (5 SIGKILLs of the optimizer in one run)": "candidates lost 0, finished LLM calls repeated 0",
    "scorer restart mid-run": "the run finishes; past the grace period it fails with the reason and resumes",
    "LLM fault matrix": "429/500/503/timeout/reset/truncated/empty/not-UTF-8: retried, skipped or a clean stop",
    "fuzzing, every RPC of both services": "crashes 0, statuses outside the documented mapping 0",
    "security (auth, rights, quotas, TLS/mTLS, tokens never logged)": "all refusals as documented",
    "multi-tenant (run ownership, the test right, LLM spend bounds, error model, no charge for refusals)": (
        "other callers' runs NOT_FOUND, test numbers 0 without the test right, refusals charged 0"
    ),
    "shared quota: 2 scorer replicas, one redis-server": "over-spend 0, one rate across replicas",
}
QUOTA_SUITE = "shared quota: 2 scorer replicas, one redis-server"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(address: str, clients: int, seconds: float) -> dict:
    fresh = itertools.count()
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def client(stub: scorer_pb2_grpc.ScorerAsyncStub, index: int) -> None:
        for call in itertools.count():
            if time.perf_counter() >= deadline:
                return
            templates = [CACHED[(index + call) % len(CACHED)], f"a fresh template {next(fresh)} of a {{}}."]
            started = time.perf_counter()
            try:
                await stub.Score(scorer_pb2.ScoreRequest(task_id="load", templates=templates), timeout=30)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1

    async with grpc.aio.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(client(stub, i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "calls": len(latencies),
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        "errors": errors,
    }


class RssSampler(threading.Thread):
    """The scorer's resident memory every `interval` seconds, to tell a plateau from a leak."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.samples.append(rss_mib(self.pid))

    def stop(self) -> list[float]:
        self._halt.set()
        self.join()
        return self.samples


def load_row(seconds: float, clients: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="promptclimb-reliability-"))
    model = build_random_clip(work / "model", "tiny")
    data = write_image_folder(work / "data", per_class=6)
    scorer = scorer_service(
        model,
        {"load": data},
        work / "cache",
        work / "scorer.log",
        "--text-cache-bytes",
        str(4 * 1024 * 1024),
        metrics=True,
    )
    process, address = scorer.process, scorer.address
    try:
        asyncio.run(load(address, clients, 3))  # warm-up
        rss_start = rss_mib(process.pid)
        sampler = RssSampler(process.pid, seconds / 10)
        sampler.start()
        result = asyncio.run(load(address, clients, seconds))
        tenths = sampler.stop()
        rss_end = rss_mib(process.pid)
        cache_bytes = scraped(scorer.metrics_url, "scorer_text_cache_bytes")
    finally:
        stop_process(process)
    errors = sum(result["errors"].values())
    detail = f" ({result['errors']})" if errors else ""
    return (
        f"| load: {clients} clients x {seconds:.0f} s, half cached, half fresh | {result['calls']} calls, "
        f"{result['calls_per_s']:.0f} calls/s, p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"errors {errors}{detail}; scorer RSS {rss_start:.0f} -> {rss_end:.0f} MiB (each tenth of the run: "
        f"{', '.join(f'{r:.0f}' for r in tenths)}), text cache {cache_bytes / 2**20:.1f} "
        f"MiB (bound 4 MiB) | errors 0, memory bounded by the caches |"
    )


def suite_row(name: str, args: list[str], env: dict) -> str:
    work = Path(tempfile.mkdtemp())
    junit, figures_file = work / "junit.xml", work / "quota-figures.json"
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args],
        cwd=REPO,
        env={**env, "PROMPTCLIMB_QUOTA_FIGURES": str(figures_file)},
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    root = ElementTree.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"no testsuite in {junit}"
    tests, failures, errors = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors"))
    passed = tests - failures - errors - int(suite.get("skipped", 0))
    examples = sum(int(n) for n in re.findall(r"(\d+) passing, (?:\d+) failing", completed.stdout))
    fuzzed = f", {examples} generated requests" if examples else ""
    if name == QUOTA_SUITE and figures_file.exists():  # the figures the shared-quota test measured
        f = json.loads(figures_file.read_text())
        fuzzed += (
            f"; {f['replicas']} replicas, {f['clients']} clients, budget {f['budget']}, scored {f['scored']}, "
            f"over-spend {f['over_spend']}"
        )
    print(completed.stdout[-2000:] if failures or errors else f"{name}: {passed}/{tests} passed", flush=True)
    return f"| {name} | {passed}/{tests} tests passed{fuzzed}, {seconds:.0f} s | {GOALS[name]} |"


def main() -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--fuzz-examples", type=int, default=3400, help="per fuzz test (3 large ones: over 10,000 requests)"
    )
    parser.add_argument("--soak", action="store_true", help="the load alone (to soak.md), for long --seconds")
    parser.add_argument("--fairness-seconds", type=float, default=20, help="each phase of the fairness row")
    parser.add_argument("--fairness-only", action="store_true", help="the fairness row alone (to fairness.md)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    env = {**os.environ, "PROMPTCLIMB_KILL_POINTS": "1,4,7,10,13", "PROMPTCLIMB_FUZZ_EXAMPLES": str(args.fuzz_examples)}
    if args.fairness_only:
        rows, table = [fairness_row(args.fairness_seconds)], "fairness.md"
    else:
        rows, table = [load_row(args.seconds, args.clients)], "soak.md" if args.soak else "reliability.md"
    print(rows[0], flush=True)
    if not (args.soak or args.fairness_only):
        rows.append(fairness_row(args.fairness_seconds))
        print(rows[-1], flush=True)
        rows += [suite_row(name, suite, env) for name, suite in SUITES.items()]
    write_table(
        args.out / table,
        [
            f"Measured on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| check | figure | goal |",
            "|---|---|---|",
            *rows,
        ],
    )


if __name__ == "__main__":
    main()
