"""Every Prometheus metric of the scorer, in one place.

RPC counts and latencies by method and status code come from the shared
interceptor (grpc_server_handled_total, grpc_server_handling_seconds).
"""

from prometheus_client import Counter, Gauge, Histogram, Info

TEMPLATES_SCORED = Counter("scorer_templates_scored_total", "Templates scored, by task and split.", ["task", "split"])
TEMPLATES_REJECTED = Counter("scorer_templates_rejected_total", "Templates refused as invalid, by task.", ["task"])
TEXT_CACHE_HITS = Counter("scorer_text_cache_hits_total", "Class prompts whose embedding came from the cache.")
TEXT_CACHE_MISSES = Counter("scorer_text_cache_misses_total", "Class prompts that had to be encoded.")
TEXT_CACHE_BYTES = Gauge("scorer_text_cache_bytes", "Bytes held by the text-embedding cache.")
TEXT_CACHE_ENTRIES = Gauge("scorer_text_cache_entries", "Prompts held by the text-embedding cache.")
BATCH_PROMPTS = Histogram(
    "scorer_batch_prompts",
    "Class prompts per text-encoder batch.",
    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
)
BATCH_REQUESTS = Histogram(
    "scorer_batch_requests", "Score calls merged into one text-encoder batch.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
QUEUE_WAIT = Histogram(
    "scorer_queue_wait_seconds",
    "Time prompts wait for the text encoder.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUED_PROMPTS = Gauge("scorer_queued_prompts", "Class prompts waiting for the text encoder.")
ABANDONED_PROMPTS = Counter(
    "scorer_abandoned_prompts_total",
    "Class prompts of calls cancelled by their client, dropped before checking or encoding.",
)
ENCODE_SECONDS = Histogram(
    "scorer_encode_seconds",
    "Text-encoder time per batch.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IMAGE_FEATURES_SECONDS = Histogram(
    "scorer_image_features_seconds",
    "Time to get a split's image features, by source (load: disk cache; compute).",
    ["source"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)
MODEL_INFO = Info("scorer_model", "The CLIP checkpoint being served.")
TOKEN_EVALUATIONS = Counter(
    "scorer_token_evaluations_total", "Templates charged to each token's evaluation budget.", ["token"]
)
TOKEN_REQUESTS = Counter("scorer_token_requests_total", "Score calls by token name and split.", ["token", "split"])
