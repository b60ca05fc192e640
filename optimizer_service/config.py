"""The optimizer process's settings: flags with OPTIMIZER_<FLAG> environment defaults, typed and validated once.

A container sets env and a shell passes flags. One run's knobs are not here: they come with each StartRun
(spec.py); what is here bounds them (`RunLimits`).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from optimizer_service.prices import Price, price_of
from optimizer_service.spec import OwnerShares, RunLimits
from promptclimb_common.paths import WritablePath
from promptclimb_common.serving_args import ServingConfig, add_serving_args, env_reader, flag_type, serving_settings

TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
# Where an LLM comes from when no flag names one: OpenAI when OPENAI_API_KEY is set, else a local server.
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"
LOCAL_LLM_URL = "http://127.0.0.1:8080/v1"


@dataclass(frozen=True)
class LlmEndpoint:
    """An OpenAI-compatible endpoint and model, and where they came from (for the log and the report)."""

    base_url: str
    model: str
    source: str  # "flags", "OPENAI_API_KEY", or "default" (nothing configured: a local server)


def resolve_llm_endpoint(base_url: str | None, model: str | None, api_key: str) -> LlmEndpoint:
    """One rule for every command: flags first; else OPENAI_API_KEY alone means OpenAI and OPENAI_DEFAULT_MODEL;
    else LOCAL_LLM_URL (source "default", which `promptclimb optimize` serves with the embedded llama-server).

    OpenAI's URL without a model gets OPENAI_DEFAULT_MODEL: that endpoint refuses an empty one."""
    if base_url:
        url, source = base_url, "flags"
    elif api_key:
        url, source = OPENAI_BASE_URL, "OPENAI_API_KEY"
    else:
        url, source = LOCAL_LLM_URL, "default"
    chosen = model or (OPENAI_DEFAULT_MODEL if url.rstrip("/") == OPENAI_BASE_URL else "")
    return LlmEndpoint(url, chosen, source)


@dataclass(frozen=True)
class LlmSettings:
    base_url: str = LOCAL_LLM_URL
    model: str = ""
    source: str = "flags"  # where base_url and model came from (resolve_llm_endpoint), for the log and the report
    api_key: str = field(default="", repr=False)
    concurrency: int = 4
    timeout_s: float = 120.0
    max_attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_completion_tokens: int = 512
    token_limit_field: str = "max_tokens"
    price: Price | None = None  # --llm-price; None: the genai-prices table's (prices.py), or unknown
    cache: bool = True
    grammar: bool = False
    context_tokens: int = 4096
    send_seed: bool = True

    @property
    def prompt_budget_tokens(self) -> int:
        """Tokens a prompt may use: the context less the reply's room."""
        return max(0, self.context_tokens - self.max_completion_tokens)

    def price_of(self, model: str) -> Price | None:
        """What `model`'s tokens cost here; None: unknown (no override, not in the table)."""
        return price_of(model, self.base_url, self.price)


@dataclass(frozen=True)
class ScorerSettings:
    address: str = "127.0.0.1:50051"
    token: str = field(default="", repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    deadline_s: float = 60.0
    grace_s: float = 300.0

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)


@dataclass(frozen=True)
class OptimizerConfig(ServingConfig):
    """The service's settings: the shared serving ones plus state, scorer and LLM."""

    port: int = 50052
    metrics_port: int | None = 9102
    anonymous_rights: frozenset[str] = frozenset({"run"})
    state_dir: Path = Path(".cache/promptclimb/optimizer")
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    max_active_runs: int = 4
    # A service run's spend is bounded by default: 1000 LLM calls (the default spec asks 60), 2M tokens, $5 where
    # priced, and 2000 scored templates (the default spec scores about 300).
    limits: RunLimits = field(
        default_factory=lambda: RunLimits(frozenset(), 1000, 2_000_000, 5.0, max_scored_templates=2000)
    )
    # One owner: 20 runs active or waiting (of the service's 100), 20,000 scored templates (ten runs at the ceiling).
    shares: OwnerShares = field(default_factory=lambda: OwnerShares(max_runs=20, max_scored_templates=20_000))
    log_level: str = "INFO"

    def writable_paths(self) -> tuple[WritablePath, ...]:
        """What `serve` writes: the SQLite state (runs, pool, conversations, LLM response cache)."""
        return (WritablePath("--state-dir", "OPTIMIZER_STATE_DIR", self.state_dir),)


_env = env_reader("OPTIMIZER")
yes_no = flag_type(bool)


def parse_price(text: str) -> Price | None:
    if not text:
        return None
    try:
        prompt, completion = (float(part) for part in text.split(","))
    except ValueError:
        wanted = "--llm-price wants PROMPT,COMPLETION in USD per million tokens"
        raise argparse.ArgumentTypeError(f"{wanted}, got {text!r}") from None
    if prompt < 0 or completion < 0:
        raise argparse.ArgumentTypeError("--llm-price values must be >= 0")
    return Price(prompt, completion)


def add_connection_args(p: argparse.ArgumentParser, *, state_dir_default: Path | None) -> None:
    """Flags both `serve` and `run` take: state, scorer, LLM endpoint."""
    d, s, llm = OptimizerConfig(), ScorerSettings(), LlmSettings()
    a = p.add_argument
    a(
        "--state-dir",
        type=Path,
        default=_env("state_dir", state_dir_default, Path),
        help="directory of the SQLite state (runs, pool, conversations, LLM response cache)",
    )
    a("--scorer", default=_env("scorer", s.address), help="HOST:PORT of the scorer")
    a(
        "--scorer-token-env",
        default=_env("scorer_token_env", "SCORER_TOKEN"),
        help="name of the environment variable holding the scorer bearer token",
    )
    a("--scorer-tls-ca", default=_env("scorer_tls_ca", None), help="CA (PEM) of the scorer's certificate; enables TLS")
    a(
        "--scorer-tls-cert",
        default=_env("scorer_tls_cert", None),
        help="client certificate (PEM) for a scorer with mTLS",
    )
    a("--scorer-tls-key", default=_env("scorer_tls_key", None), help="client key (PEM) for a scorer with mTLS")
    a(
        "--scorer-deadline-s",
        type=float,
        default=_env("scorer_deadline_s", s.deadline_s, float),
        help="deadline of one Score call",
    )
    a(
        "--scorer-grace-s",
        type=float,
        default=_env("scorer_grace_s", s.grace_s, float),
        help="how long the scorer may stay unreachable before a run fails (it stays resumable)",
    )
    a(
        "--llm-base-url",
        default=_env("llm_base_url", None),
        help=f"OpenAI-compatible endpoint, e.g. http://host:8080/v1; unset: {OPENAI_BASE_URL} when OPENAI_API_KEY "
        f"is set, else {LOCAL_LLM_URL}",
    )
    a(
        "--llm-model",
        default=_env("llm_model", None),
        help=f"chat model name (a run's spec may override it); unset: {OPENAI_DEFAULT_MODEL} on OpenAI's endpoint, "
        "else the server's own",
    )
    a(
        "--llm-concurrency",
        type=int,
        default=_env("llm_concurrency", llm.concurrency, int),
        help="most LLM calls in flight",
    )
    a(
        "--llm-timeout-s",
        type=float,
        default=_env("llm_timeout_s", llm.timeout_s, float),
        help="timeout of one LLM call",
    )
    a(
        "--llm-max-attempts",
        type=int,
        default=_env("llm_max_attempts", llm.max_attempts, int),
        help="attempts per LLM call on 429/5xx/timeouts/malformed replies",
    )
    a("--llm-backoff-initial-s", type=float, default=_env("llm_backoff_initial_s", llm.backoff_initial_s, float))
    a(
        "--llm-backoff-max-s",
        type=float,
        default=_env("llm_backoff_max_s", llm.backoff_max_s, float),
        help="longest wait between attempts, Retry-After included",
    )
    a(
        "--llm-max-completion-tokens",
        type=int,
        default=_env("llm_max_completion_tokens", llm.max_completion_tokens, int),
        help="most tokens one reply may have",
    )
    a(
        "--llm-token-limit-field",
        choices=TOKEN_LIMIT_FIELDS,
        default=_env("llm_token_limit_field", llm.token_limit_field, Literal[TOKEN_LIMIT_FIELDS]),
        help="request field carrying that limit: max_tokens (llama.cpp, vLLM, Ollama, most OpenAI chat models) or "
        "max_completion_tokens (OpenAI reasoning models, which refuse max_tokens)",
    )
    a(
        "--llm-price",
        type=parse_price,
        default=_env("llm_price", None, parse_price),
        help="PROMPT,COMPLETION in USD per million tokens; unset: genai-prices' table for the endpoint and model "
        "(a model it lacks has an unknown cost)",
    )
    a(
        "--llm-grammar",
        type=yes_no,
        default=_env("llm_grammar", False, bool),
        help="send a GBNF grammar forcing one template per line with one {} (llama.cpp's llama-server only)",
    )
    a(
        "--llm-context-tokens",
        type=int,
        default=_env("llm_context_tokens", llm.context_tokens, int),
        help="the LLM's context size in tokens; a chat keeps its opening and as many recent exchanges as fit in it, "
        "less --llm-max-completion-tokens",
    )
    a(
        "--llm-seed",
        type=yes_no,
        default=_env("llm_seed", True, bool),
        help="send each call a `seed` derived from the run's seed and the call (true/false; llama-server, vLLM and "
        "OpenAI accept it)",
    )
    a(
        "--llm-cache",
        type=yes_no,
        default=_env("llm_cache", True, bool),
        help="reuse stored LLM replies for identical requests (true/false)",
    )
    a("--log-level", default=_env("log_level", d.log_level))


def connection_settings(p: argparse.ArgumentParser, ns: argparse.Namespace) -> tuple[ScorerSettings, LlmSettings]:
    """Validates the connection flags; secrets come from the environment only."""
    if ns.llm_concurrency < 1 or ns.llm_max_attempts < 1 or ns.llm_max_completion_tokens < 1:
        p.error("--llm-concurrency, --llm-max-attempts and --llm-max-completion-tokens must be at least 1")
    if ns.llm_context_tokens <= ns.llm_max_completion_tokens:
        p.error(
            f"--llm-context-tokens ({ns.llm_context_tokens}) must exceed --llm-max-completion-tokens "
            f"({ns.llm_max_completion_tokens}): the reply needs room in the context"
        )
    if min(ns.llm_timeout_s, ns.scorer_deadline_s) <= 0 or min(ns.scorer_grace_s, ns.llm_backoff_initial_s) < 0:
        p.error("timeouts must be > 0 and grace/backoff >= 0")
    if bool(ns.scorer_tls_cert) != bool(ns.scorer_tls_key):
        p.error("--scorer-tls-cert and --scorer-tls-key go together")
    scorer = ScorerSettings(
        address=ns.scorer,
        token=os.environ.get(ns.scorer_token_env, ""),
        tls_ca=ns.scorer_tls_ca,
        tls_cert=ns.scorer_tls_cert,
        tls_key=ns.scorer_tls_key,
        deadline_s=ns.scorer_deadline_s,
        grace_s=ns.scorer_grace_s,
    )
    api_key = os.environ.get("OPENAI_API_KEY", "")
    endpoint = resolve_llm_endpoint(ns.llm_base_url, ns.llm_model, api_key)
    llm = LlmSettings(
        base_url=endpoint.base_url,
        model=endpoint.model,
        source=endpoint.source,
        api_key=api_key,
        concurrency=ns.llm_concurrency,
        timeout_s=ns.llm_timeout_s,
        max_attempts=ns.llm_max_attempts,
        backoff_initial_s=ns.llm_backoff_initial_s,
        backoff_max_s=ns.llm_backoff_max_s,
        max_completion_tokens=ns.llm_max_completion_tokens,
        token_limit_field=ns.llm_token_limit_field,
        price=ns.llm_price,
        cache=ns.llm_cache,
        grammar=ns.llm_grammar,
        context_tokens=ns.llm_context_tokens,
        send_seed=ns.llm_seed,
    )
    if not llm.api_key:
        p.error("OPENAI_API_KEY is empty; set it (any placeholder works for a local endpoint)")
    return scorer, llm


def add_serve_args(p: argparse.ArgumentParser) -> None:
    d = OptimizerConfig()
    add_connection_args(p, state_dir_default=d.state_dir)
    a = p.add_argument
    add_serving_args(
        p,
        _env,
        port=d.port,
        metrics_port=d.metrics_port,
        anonymous_rights=d.anonymous_rights,
        host=d.host,
        grace_seconds=d.grace_seconds,
    )
    a(
        "--max-active-runs",
        type=int,
        default=_env("max_active_runs", d.max_active_runs, int),
        help="runs that search at once; more wait as PENDING",
    )
    a(
        "--llm-allowed-models",
        default=_env("llm_allowed_models", ""),
        help="comma-separated models a run spec may name besides --llm-model; any other gets INVALID_ARGUMENT",
    )
    a(
        "--run-max-llm-calls",
        type=int,
        default=_env("run_max_llm_calls", d.limits.max_llm_calls, int),
        help="ceiling of a run's LLM calls: a spec's 0 takes it, a spec above it is refused (0: none)",
    )
    a(
        "--run-max-llm-tokens",
        type=int,
        default=_env("run_max_llm_tokens", d.limits.max_llm_tokens, int),
        help="ceiling of a run's LLM tokens, prompt and completion (0: none)",
    )
    a(
        "--run-max-scored-templates",
        type=int,
        default=_env("run_max_scored_templates", d.limits.max_scored_templates, int),
        help="ceiling of a run's scored templates: a spec's 0 takes it, a spec above it is refused (0: none)",
    )
    a(
        "--max-runs-per-owner",
        type=int,
        default=_env("max_runs_per_owner", d.shares.max_runs, int),
        help="runs one owner may have active or waiting; beyond: RESOURCE_EXHAUSTED TOO_MANY_RUNS (0: no share)",
    )
    a(
        "--owner-max-scored-templates",
        type=int,
        default=_env("owner_max_scored_templates", d.shares.max_scored_templates, int),
        help="templates one owner's runs may have scored in all, an unfinished run counting its whole budget; "
        "beyond: RESOURCE_EXHAUSTED OWNER_BUDGET_SPENT (0: no share)",
    )
    a(
        "--run-max-llm-cost-usd",
        type=float,
        default=_env("run_max_llm_cost_usd", d.limits.max_llm_cost_usd, float),
        help="ceiling of a run's LLM cost in USD (by --llm-price or the genai-prices table); applies only where the "
        "model has a price (0: none)",
    )


def serve_config(p: argparse.ArgumentParser, ns: argparse.Namespace) -> OptimizerConfig:
    scorer, llm = connection_settings(p, ns)
    if ns.max_active_runs < 1:
        p.error("--max-active-runs must be at least 1")
    cost_ceiling_ok = ns.run_max_llm_cost_usd >= 0 and math.isfinite(ns.run_max_llm_cost_usd)
    if min(ns.run_max_llm_calls, ns.run_max_llm_tokens, ns.run_max_scored_templates) < 0 or not cost_ceiling_ok:
        p.error(
            "--run-max-llm-calls, --run-max-llm-tokens, --run-max-scored-templates and --run-max-llm-cost-usd must be "
            ">= 0 (0: no ceiling)"
        )
    if min(ns.max_runs_per_owner, ns.owner_max_scored_templates) < 0:
        p.error("--max-runs-per-owner and --owner-max-scored-templates must be >= 0 (0: no share)")
    limits = RunLimits(
        allowed_models=frozenset(m.strip() for m in ns.llm_allowed_models.split(",") if m.strip()),
        max_llm_calls=ns.run_max_llm_calls,
        max_llm_tokens=ns.run_max_llm_tokens,
        max_llm_cost_usd=ns.run_max_llm_cost_usd,
        priced=llm.price_of(llm.model) is not None,
        max_scored_templates=ns.run_max_scored_templates,
    )
    return OptimizerConfig(
        **serving_settings(p, ns),
        state_dir=ns.state_dir,
        scorer=scorer,
        llm=llm,
        max_active_runs=ns.max_active_runs,
        limits=limits,
        shares=OwnerShares(ns.max_runs_per_owner, ns.owner_max_scored_templates),
        log_level=ns.log_level,
    )
