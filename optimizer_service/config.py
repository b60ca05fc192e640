"""Every setting of the optimizer, typed and validated once.

Two kinds live here. `OptimizerConfig` is the process's settings (flags with
OPTIMIZER_<FLAG> environment defaults, so a container sets env and a shell
passes flags). `RunSettings` is one run's knobs: the proto RunSpec with its
zero values replaced by the documented defaults and every knob checked
against a cap, so a hostile or mistaken spec cannot make a run unbounded.
"""

from __future__ import annotations

import argparse
import enum
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from optimizer_service.baselines import A_PHOTO_OF, PLAIN, BaselineError, hand_engineered
from optimizer_service.pool import template_key
from optimizer_service.seeds import BUILTIN_TEMPLATES
from promptclimb.optimizer.v1 import optimizer_pb2 as pb
from promptclimb_common.paths import WritablePath
from promptclimb_common.serving_args import ServingConfig, add_serving_args, env_reader, serving_settings
from promptclimb_common.templates import template_problem


# --------------------------------------------------------------------------
# One run's knobs
# --------------------------------------------------------------------------


class Feedback(str, enum.Enum):
    POSITIVE_NEGATIVE = "positive_negative"  # the paper's method: good and bad lists
    POSITIVE_ONLY = "positive_only"  # the paper's ablation: good list only
    NONE = "none"  # random search: nothing shown, the control for whether feedback helps


class Conversation(str, enum.Enum):
    CHAT = "chat"  # one growing chat per reset, later turns carry accuracy feedback
    STATELESS = "stateless"  # one fresh message per iteration (the authors' code)


class Preset(str, enum.Enum):
    PROMPTCLIMB = "promptclimb"  # our defaults (the README's "Presets" says why each differs)
    AUTHORS = "authors"  # the authors' public code, knob for knob


class InitialPool(str, enum.Enum):
    BUILTIN = "builtin"
    GIVEN = "given"
    LLM = "llm"
    HAND_ENGINEERED = "hand_engineered"  # the CLIP authors' templates for one dataset, after the two plain baselines


_FEEDBACK = {pb.FEEDBACK_UNSPECIFIED: Feedback.POSITIVE_NEGATIVE, pb.FEEDBACK_POSITIVE_NEGATIVE: Feedback.POSITIVE_NEGATIVE,
             pb.FEEDBACK_POSITIVE_ONLY: Feedback.POSITIVE_ONLY, pb.FEEDBACK_NONE: Feedback.NONE}
_CONVERSATION = {pb.CONVERSATION_MODE_UNSPECIFIED: Conversation.CHAT, pb.CONVERSATION_MODE_CHAT: Conversation.CHAT,
                 pb.CONVERSATION_MODE_STATELESS: Conversation.STATELESS}
_PRESET = {pb.PRESET_UNSPECIFIED: Preset.PROMPTCLIMB, pb.PRESET_PROMPTCLIMB: Preset.PROMPTCLIMB, pb.PRESET_AUTHORS: Preset.AUTHORS}
_POOL = {pb.INITIAL_POOL_UNSPECIFIED: InitialPool.BUILTIN, pb.INITIAL_POOL_BUILTIN: InitialPool.BUILTIN,
         pb.INITIAL_POOL_GIVEN: InitialPool.GIVEN, pb.INITIAL_POOL_LLM: InitialPool.LLM,
         pb.INITIAL_POOL_HAND_ENGINEERED: InitialPool.HAND_ENGINEERED}


class SpecError(ValueError):
    """A run spec breaks a rule; the message names the field (its first word) and its allowed range."""


class ModelNotAllowed(SpecError):
    """llm_model names a model outside the service's --llm-allowed-models."""


@dataclass(frozen=True)
class RunLimits:
    """The service's bounds on a run's LLM spend: the models a spec may name, and the ceilings of the LLM budgets.

    A ceiling (0: none) is what a spec's 0 takes, and a spec above it is refused. `allowed_models` None: any model
    (a local `run`, where the key is the caller's own); else the models besides the default one. The cost ceiling
    applies only where the service knows prices (`priced`); without them a spec's cost limit is refused."""

    allowed_models: frozenset[str] | None = None
    max_llm_calls: int = 0
    max_llm_tokens: int = 0
    max_llm_cost_usd: float = 0.0
    priced: bool = True


@dataclass(frozen=True)
class Knob:
    default: int
    low: int
    cap: int


# (default, smallest, cap) of every integer knob. Caps keep one run's cost bounded.
KNOBS: dict[str, Knob] = {
    "initial_pool_size": Knob(20, 1, 256),
    "restarts": Knob(3, 1, 16),
    "resets": Knob(2, 1, 10),
    "iterations": Knob(10, 1, 100),
    "top_k": Knob(3, 1, 20),
    "templates_per_call": Knob(4, 1, 32),
    "report_top": Knob(5, 1, 50),
    "ensemble_size": Knob(8, 1, 32),
}


@dataclass(frozen=True)
class PresetValues:
    """What a preset sets: `fixed` knobs a spec may not change (it may only repeat them), `defaults` it may."""

    fixed: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


# The authors' public code (reference facts): one fresh message per call, accuracies hidden, one template per call,
# top and bottom 3, 10 iterations, temperature 1, an initial pool of 80. It has no restarts or resets, so R=S=1.
PRESETS: dict[Preset, PresetValues] = {
    Preset.PROMPTCLIMB: PresetValues(),
    Preset.AUTHORS: PresetValues(
        fixed={"conversation": "stateless", "show_accuracies": False, "templates_per_call": 1, "top_k": 3, "iterations": 10,
               "temperature": 1.0},
        defaults={"restarts": 1, "resets": 1, "initial_pool_size": 80},
    ),
}
MAX_TEXT_FIELD = 256  # task id, model name, label
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class RunSettings:
    """A run spec with defaults applied and caps checked; what search.py reads."""

    task_id: str
    llm_model: str
    initial_pool: InitialPool = InitialPool.BUILTIN
    initial_templates: tuple[str, ...] = ()
    initial_pool_size: int = 20
    restarts: int = 3
    resets: int = 2
    iterations: int = 10
    top_k: int = 3
    templates_per_call: int = 4
    feedback: Feedback = Feedback.POSITIVE_NEGATIVE
    conversation: Conversation = Conversation.CHAT
    show_accuracies: bool = True
    temperature: float = 1.0
    max_llm_calls: int = 0
    max_llm_tokens: int = 0
    max_scored_templates: int = 0
    max_wall_seconds: float = 0.0  # the spec's max_wall_time
    max_llm_cost_usd: float = 0.0
    report_top: int = 5
    seed: int = 0
    label: str = ""
    hand_engineered_dataset: str = ""
    preset: Preset = Preset.PROMPTCLIMB
    ensemble_size: int = 8
    replay_run_id: str = ""

    def pool_templates(self) -> tuple[str, ...] | None:
        return pool_templates(self.initial_pool, self.initial_templates, self.hand_engineered_dataset)

    @property
    def iterations_total(self) -> int:
        return self.restarts * self.resets * self.iterations

    @classmethod
    def from_proto(cls, spec: pb.RunSpec, default_model: str, limits: RunLimits = RunLimits()) -> RunSettings:
        """Applies the preset, the defaults and the service's limits, checks the caps; raises SpecError naming the first
        bad field."""
        for name in ("task_id", "llm_model", "label", "hand_engineered_dataset", "replay_run_id"):
            if len(getattr(spec, name)) > MAX_TEXT_FIELD:
                raise SpecError(f"{name} is longer than {MAX_TEXT_FIELD} characters")
        if not spec.task_id.strip():
            raise SpecError("task_id is required (see the scorer's ListTasks)")
        model = spec.llm_model or default_model
        if not model:
            raise SpecError("llm_model is empty and the service has no default model (--llm-model)")
        if limits.allowed_models is not None and model != default_model and model not in limits.allowed_models:
            allowed = ", ".join(sorted({default_model, *limits.allowed_models} - {""}))
            raise ModelNotAllowed(f"llm_model {model!r} is not allowed by this service; allowed: {allowed} "
                                  "(its operator sets --llm-allowed-models)")
        preset = _enum(_PRESET, spec.preset, "preset")
        chosen = _Chooser(preset)
        pool = _enum(_POOL, spec.initial_pool, "initial_pool")
        available = _pool_templates(pool, spec)
        knobs = {}
        for name, knob in KNOBS.items():
            if name == "initial_pool_size" and pool in (InitialPool.GIVEN, InitialPool.HAND_ENGINEERED):
                default = len(available)  # a listed pool: all of it, whatever the preset
                value = getattr(spec, name) or default
            else:
                default = knob.default
                value = chosen(name, getattr(spec, name) or None, default)
            if not knob.low <= value <= knob.cap:
                raise SpecError(f"{name}={value} is out of range; allowed {knob.low}..{knob.cap} (0 takes the default {default})")
            knobs[name] = value
        if available is not None and knobs["initial_pool_size"] > len(available):
            raise SpecError(f"initial_pool_size={knobs['initial_pool_size']} is larger than the {pool.value} pool, which has "
                            f"{len(available)} templates; ask for at most {len(available)} (or 0 for the default)")
        for name in ("max_llm_calls", "max_llm_tokens", "max_scored_templates"):
            if getattr(spec, name) < 0:
                raise SpecError(f"{name} must be >= 0 (0 means no limit)")
        wall = spec.max_wall_time
        if wall.seconds < 0 or not 0 <= wall.nanos < 1_000_000_000:
            raise SpecError("max_wall_time must be a duration >= 0 (unset or 0 means no limit)")
        llm_budgets = _llm_budgets(spec, limits)
        temperature = chosen("temperature", spec.temperature if spec.HasField("temperature") else None, 1.0)
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise SpecError(f"temperature={temperature} is out of range; allowed 0..{MAX_TEMPERATURE}")
        conversation = spec.conversation and _enum(_CONVERSATION, spec.conversation, "conversation").value
        return cls(
            task_id=spec.task_id,
            llm_model=model,
            initial_pool=pool,
            initial_templates=tuple(spec.initial_templates),
            feedback=_enum(_FEEDBACK, spec.feedback, "feedback"),
            conversation=Conversation(chosen("conversation", conversation or None, Conversation.CHAT.value)),
            show_accuracies=chosen("show_accuracies", spec.show_accuracies if spec.HasField("show_accuracies") else None, True),
            temperature=temperature,
            max_scored_templates=spec.max_scored_templates,
            max_wall_seconds=wall.ToNanoseconds() / 1e9,
            seed=spec.seed,
            label=spec.label,
            hand_engineered_dataset=spec.hand_engineered_dataset,
            preset=preset,
            replay_run_id=spec.replay_run_id,
            **llm_budgets,
            **knobs,
        )

    def to_proto(self) -> pb.RunSpec:
        """The effective spec, defaults filled in, as GetRun reports it."""
        values = asdict(self)
        values["initial_pool"] = _key(_POOL, self.initial_pool)
        values["feedback"] = _key(_FEEDBACK, self.feedback)
        values["conversation"] = _key(_CONVERSATION, self.conversation)
        values["preset"] = _key(_PRESET, self.preset)
        spec = pb.RunSpec(**{k: v for k, v in values.items() if k != "max_wall_seconds"})
        spec.max_wall_time.FromNanoseconds(round(self.max_wall_seconds * 1e9))
        return spec

    def to_json(self) -> dict:
        return {**asdict(self), "initial_templates": list(self.initial_templates)}

    @classmethod
    def from_json(cls, data: dict) -> RunSettings:
        """Also reads the settings of runs stored before a knob existed (they take its default)."""
        return cls(**{**data, "initial_pool": InitialPool(data["initial_pool"]), "feedback": Feedback(data["feedback"]),
                      "conversation": Conversation(data["conversation"]), "preset": Preset(data.get("preset", "promptclimb")),
                      "initial_templates": tuple(data["initial_templates"])})


def _llm_budgets(spec: pb.RunSpec, limits: RunLimits) -> dict:
    """The LLM budgets: the spec's, or the service's ceiling where the spec sets none; above a ceiling is refused."""
    if not (spec.max_llm_cost_usd >= 0 and math.isfinite(spec.max_llm_cost_usd)):
        raise SpecError("max_llm_cost_usd must be a finite number >= 0 (0 takes the service's ceiling)")
    if spec.max_llm_cost_usd and not limits.priced:
        raise SpecError("max_llm_cost_usd is set, but this service has no LLM price table (--llm-price) to count cost by")
    ceilings = {"max_llm_calls": limits.max_llm_calls, "max_llm_tokens": limits.max_llm_tokens,
                "max_llm_cost_usd": limits.max_llm_cost_usd if limits.priced else 0.0}
    budgets = {}
    for name, ceiling in ceilings.items():
        value = getattr(spec, name)
        if ceiling and value > ceiling:
            raise SpecError(f"{name}={value:g} is above this service's ceiling of {ceiling:g} (0 takes the ceiling)")
        budgets[name] = value or ceiling
    return budgets


class _Chooser:
    """One knob's value: the spec's if set, else the preset's, else the default; a spec may not contradict a fixed one."""

    def __init__(self, preset: Preset) -> None:
        self.preset, self.values = preset, PRESETS[preset]

    def __call__(self, name: str, given, default):
        fixed = self.values.fixed.get(name)
        if fixed is not None and given is not None and given != fixed:
            raise SpecError(f"preset {self.preset.value} fixes {name}={fixed}; {name}={given} contradicts it "
                            "(leave it unset, or use preset promptclimb)")
        if given is not None:
            return given
        return fixed if fixed is not None else self.values.defaults.get(name, default)


def _pool_templates(pool: InitialPool, spec: pb.RunSpec) -> tuple[str, ...] | None:
    """The templates an initial pool draws from (None: the LLM writes them); refuses a pool that cannot be used."""
    given = tuple(spec.initial_templates)
    if pool is not InitialPool.GIVEN and given:
        raise SpecError("initial_templates is only used with initial_pool=GIVEN")
    if pool is not InitialPool.HAND_ENGINEERED and spec.hand_engineered_dataset:
        raise SpecError("hand_engineered_dataset is only used with initial_pool=HAND_ENGINEERED")
    if pool is InitialPool.HAND_ENGINEERED:
        try:
            hand_engineered(spec.hand_engineered_dataset)
        except BaselineError as err:
            raise SpecError(f"initial_pool=HAND_ENGINEERED: {err}") from err
    if pool is InitialPool.GIVEN:
        if not given:
            raise SpecError("initial_pool=GIVEN needs initial_templates")
        if len(given) > KNOBS["initial_pool_size"].cap:
            raise SpecError(f"initial_templates holds {len(given)}; allowed at most {KNOBS['initial_pool_size'].cap}")
        for index, template in enumerate(given):
            problem = template_problem(template)
            if problem:
                raise SpecError(f"initial_templates[{index}]: {problem}")
    return pool_templates(pool, given, spec.hand_engineered_dataset)


def pool_templates(pool: InitialPool, given: tuple[str, ...], dataset: str) -> tuple[str, ...] | None:
    """The distinct templates an initial pool draws each restart's sample from; None for the LLM-written pool."""
    if pool is InitialPool.BUILTIN:
        return BUILTIN_TEMPLATES
    if pool is InitialPool.HAND_ENGINEERED:
        listed = (PLAIN, A_PHOTO_OF, *hand_engineered(dataset))
    elif pool is InitialPool.GIVEN:
        listed = given
    else:
        return None
    first_of: dict[str, str] = {}
    for template in listed:
        first_of.setdefault(template_key(template), template)
    return tuple(first_of.values())


def _enum(table: dict, value: int, name: str):
    if value not in table:
        raise SpecError(f"{name}={value} is not a known value")
    return table[value]


def _key(table: dict, member) -> int:
    return next(k for k, v in table.items() if v is member and k != 0)


# --------------------------------------------------------------------------
# The process's settings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """US dollars per million prompt and completion tokens."""

    prompt_per_mtok: float = 0.0
    completion_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok) / 1e6


TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True)
class LlmSettings:
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = ""
    api_key: str = field(default="", repr=False)
    concurrency: int = 4
    timeout_s: float = 120.0
    max_attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    max_completion_tokens: int = 512
    token_limit_field: str = "max_tokens"
    price: Price = field(default_factory=Price)
    cache: bool = True
    grammar: bool = False
    context_tokens: int = 4096
    send_seed: bool = True

    @property
    def prompt_budget_tokens(self) -> int:
        """Tokens a prompt may use: the context less the reply's room."""
        return max(0, self.context_tokens - self.max_completion_tokens)


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
    # A service run's LLM spend is bounded by default: 1000 calls (the default spec asks 60), 2M tokens, $5 where priced.
    limits: RunLimits = field(default_factory=lambda: RunLimits(frozenset(), 1000, 2_000_000, 5.0))
    log_level: str = "INFO"

    def writable_paths(self) -> tuple[WritablePath, ...]:
        """What `serve` writes: the SQLite state (runs, pool, conversations, LLM response cache)."""
        return (WritablePath("--state-dir", "OPTIMIZER_STATE_DIR", self.state_dir),)


_env = env_reader("OPTIMIZER")


def _flag(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _price(text: str) -> Price:
    if not text:
        return Price()
    try:
        prompt, completion = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--llm-price wants PROMPT,COMPLETION in USD per million tokens, got {text!r}") from None
    if prompt < 0 or completion < 0:
        raise argparse.ArgumentTypeError("--llm-price values must be >= 0")
    return Price(prompt, completion)


def add_connection_args(p: argparse.ArgumentParser, *, state_dir_default: Path | None) -> None:
    """Flags both `serve` and `run` take: state, scorer, LLM endpoint."""
    d, s, llm = OptimizerConfig(), ScorerSettings(), LlmSettings()
    a = p.add_argument
    a("--state-dir", type=Path, default=_env("state_dir", state_dir_default),
      help="directory of the SQLite state (runs, pool, conversations, LLM response cache)")
    a("--scorer", default=_env("scorer", s.address), help="HOST:PORT of the scorer")
    a("--scorer-token-env", default=_env("scorer_token_env", "SCORER_TOKEN"),
      help="name of the environment variable holding the scorer bearer token")
    a("--scorer-tls-ca", default=_env("scorer_tls_ca", None), help="CA (PEM) of the scorer's certificate; enables TLS")
    a("--scorer-tls-cert", default=_env("scorer_tls_cert", None), help="client certificate (PEM) for a scorer with mTLS")
    a("--scorer-tls-key", default=_env("scorer_tls_key", None), help="client key (PEM) for a scorer with mTLS")
    a("--scorer-deadline-s", type=float, default=float(_env("scorer_deadline_s", s.deadline_s)), help="deadline of one Score call")
    a("--scorer-grace-s", type=float, default=float(_env("scorer_grace_s", s.grace_s)),
      help="how long the scorer may stay unreachable before a run fails (it stays resumable)")
    a("--llm-base-url", default=_env("llm_base_url", llm.base_url), help="OpenAI-compatible endpoint, e.g. http://host:8080/v1")
    a("--llm-model", default=_env("llm_model", llm.model), help="chat model name (a run's spec may override it)")
    a("--llm-concurrency", type=int, default=int(_env("llm_concurrency", llm.concurrency)), help="most LLM calls in flight")
    a("--llm-timeout-s", type=float, default=float(_env("llm_timeout_s", llm.timeout_s)), help="timeout of one LLM call")
    a("--llm-max-attempts", type=int, default=int(_env("llm_max_attempts", llm.max_attempts)),
      help="attempts per LLM call on 429/5xx/timeouts/malformed replies")
    a("--llm-backoff-initial-s", type=float, default=float(_env("llm_backoff_initial_s", llm.backoff_initial_s)))
    a("--llm-backoff-max-s", type=float, default=float(_env("llm_backoff_max_s", llm.backoff_max_s)),
      help="longest wait between attempts, Retry-After included")
    a("--llm-max-completion-tokens", type=int, default=int(_env("llm_max_completion_tokens", llm.max_completion_tokens)),
      help="most tokens one reply may have")
    a("--llm-token-limit-field", default=_env("llm_token_limit_field", llm.token_limit_field), choices=TOKEN_LIMIT_FIELDS,
      help="request field carrying that limit: max_tokens (llama.cpp, vLLM, Ollama, most OpenAI chat models) or "
           "max_completion_tokens (OpenAI reasoning models, which refuse max_tokens)")
    a("--llm-price", type=_price, default=_price(str(_env("llm_price", ""))),
      help="PROMPT,COMPLETION in USD per million tokens, to report cost")
    a("--llm-grammar", type=_flag, default=_flag(str(_env("llm_grammar", "false"))),
      help="send a GBNF grammar forcing one template per line with one {} (llama.cpp's llama-server only)")
    a("--llm-context-tokens", type=int, default=int(_env("llm_context_tokens", llm.context_tokens)),
      help="the LLM's context size in tokens; a chat keeps its opening and as many recent exchanges as fit in it, "
           "less --llm-max-completion-tokens")
    a("--llm-seed", type=_flag, default=_flag(str(_env("llm_seed", "true"))),
      help="send each call a `seed` derived from the run's seed and the call (true/false; llama-server, vLLM and OpenAI accept it)")
    a("--llm-cache", type=_flag, default=_flag(str(_env("llm_cache", "true"))),
      help="reuse stored LLM replies for identical requests (true/false)")
    a("--log-level", default=_env("log_level", d.log_level))


def connection_settings(p: argparse.ArgumentParser, ns: argparse.Namespace) -> tuple[ScorerSettings, LlmSettings]:
    """Validates the connection flags; secrets come from the environment only."""
    if ns.llm_concurrency < 1 or ns.llm_max_attempts < 1 or ns.llm_max_completion_tokens < 1:
        p.error("--llm-concurrency, --llm-max-attempts and --llm-max-completion-tokens must be at least 1")
    if ns.llm_context_tokens <= ns.llm_max_completion_tokens:
        p.error(f"--llm-context-tokens ({ns.llm_context_tokens}) must exceed --llm-max-completion-tokens "
                f"({ns.llm_max_completion_tokens}): the reply needs room in the context")
    if min(ns.llm_timeout_s, ns.scorer_deadline_s) <= 0 or min(ns.scorer_grace_s, ns.llm_backoff_initial_s) < 0:
        p.error("timeouts must be > 0 and grace/backoff >= 0")
    if bool(ns.scorer_tls_cert) != bool(ns.scorer_tls_key):
        p.error("--scorer-tls-cert and --scorer-tls-key go together")
    scorer = ScorerSettings(
        address=ns.scorer, token=os.environ.get(ns.scorer_token_env, ""), tls_ca=ns.scorer_tls_ca,
        tls_cert=ns.scorer_tls_cert, tls_key=ns.scorer_tls_key, deadline_s=ns.scorer_deadline_s, grace_s=ns.scorer_grace_s,
    )
    llm = LlmSettings(
        base_url=ns.llm_base_url, model=ns.llm_model, api_key=os.environ.get("OPENAI_API_KEY", ""),
        concurrency=ns.llm_concurrency, timeout_s=ns.llm_timeout_s, max_attempts=ns.llm_max_attempts,
        backoff_initial_s=ns.llm_backoff_initial_s, backoff_max_s=ns.llm_backoff_max_s,
        max_completion_tokens=ns.llm_max_completion_tokens, token_limit_field=ns.llm_token_limit_field,
        price=ns.llm_price, cache=ns.llm_cache, grammar=ns.llm_grammar, context_tokens=ns.llm_context_tokens,
        send_seed=ns.llm_seed,
    )
    if not llm.api_key:
        p.error("OPENAI_API_KEY is empty; set it (any placeholder works for a local endpoint)")
    return scorer, llm


def add_serve_args(p: argparse.ArgumentParser) -> None:
    d = OptimizerConfig()
    add_connection_args(p, state_dir_default=d.state_dir)
    a = p.add_argument
    add_serving_args(p, _env, port=d.port, metrics_port=d.metrics_port, anonymous_rights=d.anonymous_rights,
                     host=d.host, grace_seconds=d.grace_seconds)
    a("--max-active-runs", type=int, default=int(_env("max_active_runs", d.max_active_runs)),
      help="runs that search at once; more wait as PENDING")
    a("--llm-allowed-models", default=_env("llm_allowed_models", ""),
      help="comma-separated models a run spec may name besides --llm-model; any other gets INVALID_ARGUMENT")
    a("--run-max-llm-calls", type=int, default=int(_env("run_max_llm_calls", d.limits.max_llm_calls)),
      help="ceiling of a run's LLM calls: a spec's 0 takes it, a spec above it is refused (0: none)")
    a("--run-max-llm-tokens", type=int, default=int(_env("run_max_llm_tokens", d.limits.max_llm_tokens)),
      help="ceiling of a run's LLM tokens, prompt and completion (0: none)")
    a("--run-max-llm-cost-usd", type=float, default=float(_env("run_max_llm_cost_usd", d.limits.max_llm_cost_usd)),
      help="ceiling of a run's LLM cost in USD by --llm-price; applies only with a price (0: none)")


def serve_config(p: argparse.ArgumentParser, ns: argparse.Namespace) -> OptimizerConfig:
    scorer, llm = connection_settings(p, ns)
    if ns.max_active_runs < 1:
        p.error("--max-active-runs must be at least 1")
    if min(ns.run_max_llm_calls, ns.run_max_llm_tokens) < 0 or not (ns.run_max_llm_cost_usd >= 0 and math.isfinite(ns.run_max_llm_cost_usd)):
        p.error("--run-max-llm-calls, --run-max-llm-tokens and --run-max-llm-cost-usd must be >= 0 (0: no ceiling)")
    limits = RunLimits(
        allowed_models=frozenset(m.strip() for m in ns.llm_allowed_models.split(",") if m.strip()),
        max_llm_calls=ns.run_max_llm_calls, max_llm_tokens=ns.run_max_llm_tokens, max_llm_cost_usd=ns.run_max_llm_cost_usd,
        priced=llm.price != Price(),
    )
    return OptimizerConfig(
        **serving_settings(p, ns), state_dir=ns.state_dir, scorer=scorer, llm=llm,
        max_active_runs=ns.max_active_runs, limits=limits, log_level=ns.log_level,
    )
