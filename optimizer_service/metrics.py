"""Every metric of the optimizer, in one place; names carry their unit and meaning."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Gauge("optimizer_runs", "Runs in the state database, by state.", ["state"])
BEST_TRAIN_ACCURACY = Gauge(
    "optimizer_run_best_train_accuracy", "Best train accuracy so far of each active run.", ["run_id"]
)

LLM_CALLS = Counter(
    "optimizer_llm_calls_total",
    "LLM requests sent, by model and outcome (success, error, cached).",
    ["model", "outcome"],
)
LLM_TOKENS = Counter(
    "optimizer_llm_tokens_total", "LLM tokens used, by model and kind (prompt, completion).", ["model", "kind"]
)
LLM_ERRORS = Counter(
    "optimizer_llm_errors_total",
    "Failed LLM requests, by model and kind (429, 5xx, timeout, connection, malformed, refused).",
    ["model", "kind"],
)
LLM_SECONDS = Histogram(
    "optimizer_llm_request_duration_seconds",
    "Time of one LLM request, by model.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)

SCORER_CALLS = Counter("optimizer_scorer_calls_total", "Score calls to the scorer, by gRPC code.", ["code"])
SCORER_SECONDS = Histogram(
    "optimizer_scorer_call_duration_seconds",
    "Time of one Score call.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

CANDIDATES = Counter(
    "optimizer_candidates_total",
    "Candidate templates, by outcome: scored (once per run), admitted or reused (into a restart's pool), "
    "duplicate, invalid, extra (beyond m).",
    ["outcome"],
)
