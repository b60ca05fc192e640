from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]

class Feedback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_UNSPECIFIED: _ClassVar[Feedback]
    FEEDBACK_POSITIVE_NEGATIVE: _ClassVar[Feedback]
    FEEDBACK_POSITIVE_ONLY: _ClassVar[Feedback]
    FEEDBACK_NONE: _ClassVar[Feedback]

class ConversationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONVERSATION_MODE_UNSPECIFIED: _ClassVar[ConversationMode]
    CONVERSATION_MODE_CHAT: _ClassVar[ConversationMode]
    CONVERSATION_MODE_STATELESS: _ClassVar[ConversationMode]

class InitialPool(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIAL_POOL_UNSPECIFIED: _ClassVar[InitialPool]
    INITIAL_POOL_BUILTIN: _ClassVar[InitialPool]
    INITIAL_POOL_GIVEN: _ClassVar[InitialPool]
    INITIAL_POOL_LLM: _ClassVar[InitialPool]
    INITIAL_POOL_HAND_ENGINEERED: _ClassVar[InitialPool]

class Preset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESET_UNSPECIFIED: _ClassVar[Preset]
    PRESET_PROMPTCLIMB: _ClassVar[Preset]
    PRESET_AUTHORS: _ClassVar[Preset]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState
FEEDBACK_UNSPECIFIED: Feedback
FEEDBACK_POSITIVE_NEGATIVE: Feedback
FEEDBACK_POSITIVE_ONLY: Feedback
FEEDBACK_NONE: Feedback
CONVERSATION_MODE_UNSPECIFIED: ConversationMode
CONVERSATION_MODE_CHAT: ConversationMode
CONVERSATION_MODE_STATELESS: ConversationMode
INITIAL_POOL_UNSPECIFIED: InitialPool
INITIAL_POOL_BUILTIN: InitialPool
INITIAL_POOL_GIVEN: InitialPool
INITIAL_POOL_LLM: InitialPool
INITIAL_POOL_HAND_ENGINEERED: InitialPool
PRESET_UNSPECIFIED: Preset
PRESET_PROMPTCLIMB: Preset
PRESET_AUTHORS: Preset

class RunSpec(_message.Message):
    __slots__ = ("task_id", "llm_model", "initial_pool", "initial_templates", "initial_pool_size", "restarts", "resets", "iterations", "top_k", "templates_per_call", "feedback", "conversation", "hide_accuracies", "temperature", "max_llm_calls", "max_llm_tokens", "max_scored_templates", "max_wall_seconds", "report_top", "seed", "label", "hand_engineered_dataset", "preset", "ensemble_size", "replay_run_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LLM_MODEL_FIELD_NUMBER: _ClassVar[int]
    INITIAL_POOL_FIELD_NUMBER: _ClassVar[int]
    INITIAL_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    INITIAL_POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RESETS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    HIDE_ACCURACIES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_LLM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORED_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    MAX_WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPORT_TOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    HAND_ENGINEERED_DATASET_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    llm_model: str
    initial_pool: InitialPool
    initial_templates: _containers.RepeatedScalarFieldContainer[str]
    initial_pool_size: int
    restarts: int
    resets: int
    iterations: int
    top_k: int
    templates_per_call: int
    feedback: Feedback
    conversation: ConversationMode
    hide_accuracies: bool
    temperature: float
    max_llm_calls: int
    max_llm_tokens: int
    max_scored_templates: int
    max_wall_seconds: float
    report_top: int
    seed: int
    label: str
    hand_engineered_dataset: str
    preset: Preset
    ensemble_size: int
    replay_run_id: str
    def __init__(self, task_id: _Optional[str] = ..., llm_model: _Optional[str] = ..., initial_pool: _Optional[_Union[InitialPool, str]] = ..., initial_templates: _Optional[_Iterable[str]] = ..., initial_pool_size: _Optional[int] = ..., restarts: _Optional[int] = ..., resets: _Optional[int] = ..., iterations: _Optional[int] = ..., top_k: _Optional[int] = ..., templates_per_call: _Optional[int] = ..., feedback: _Optional[_Union[Feedback, str]] = ..., conversation: _Optional[_Union[ConversationMode, str]] = ..., hide_accuracies: _Optional[bool] = ..., temperature: _Optional[float] = ..., max_llm_calls: _Optional[int] = ..., max_llm_tokens: _Optional[int] = ..., max_scored_templates: _Optional[int] = ..., max_wall_seconds: _Optional[float] = ..., report_top: _Optional[int] = ..., seed: _Optional[int] = ..., label: _Optional[str] = ..., hand_engineered_dataset: _Optional[str] = ..., preset: _Optional[_Union[Preset, str]] = ..., ensemble_size: _Optional[int] = ..., replay_run_id: _Optional[str] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: RunSpec
    def __init__(self, spec: _Optional[_Union[RunSpec, _Mapping]] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "after_sequence")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    after_sequence: int
    def __init__(self, run_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class ScoredTemplate(_message.Message):
    __slots__ = ("template", "train_accuracy", "test_accuracy")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    template: str
    train_accuracy: float
    test_accuracy: float
    def __init__(self, template: _Optional[str] = ..., train_accuracy: _Optional[float] = ..., test_accuracy: _Optional[float] = ...) -> None: ...

class ScoredEnsemble(_message.Message):
    __slots__ = ("templates", "train_accuracy", "test_accuracy")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    train_accuracy: float
    test_accuracy: float
    def __init__(self, templates: _Optional[_Iterable[str]] = ..., train_accuracy: _Optional[float] = ..., test_accuracy: _Optional[float] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("llm_calls", "llm_prompt_tokens", "llm_completion_tokens", "llm_errors", "llm_cost_usd", "scorer_calls", "templates_scored", "candidates_duplicate", "candidates_invalid", "iterations_done", "iterations_total", "llm_cache_hits", "active_seconds", "candidates_extra", "candidates_reused", "ensembles_scored", "llm_context_trims")
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    LLM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LLM_COST_USD_FIELD_NUMBER: _ClassVar[int]
    SCORER_CALLS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_SCORED_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_INVALID_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_DONE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LLM_CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_EXTRA_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_REUSED_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLES_SCORED_FIELD_NUMBER: _ClassVar[int]
    LLM_CONTEXT_TRIMS_FIELD_NUMBER: _ClassVar[int]
    llm_calls: int
    llm_prompt_tokens: int
    llm_completion_tokens: int
    llm_errors: int
    llm_cost_usd: float
    scorer_calls: int
    templates_scored: int
    candidates_duplicate: int
    candidates_invalid: int
    iterations_done: int
    iterations_total: int
    llm_cache_hits: int
    active_seconds: float
    candidates_extra: int
    candidates_reused: int
    ensembles_scored: int
    llm_context_trims: int
    def __init__(self, llm_calls: _Optional[int] = ..., llm_prompt_tokens: _Optional[int] = ..., llm_completion_tokens: _Optional[int] = ..., llm_errors: _Optional[int] = ..., llm_cost_usd: _Optional[float] = ..., scorer_calls: _Optional[int] = ..., templates_scored: _Optional[int] = ..., candidates_duplicate: _Optional[int] = ..., candidates_invalid: _Optional[int] = ..., iterations_done: _Optional[int] = ..., iterations_total: _Optional[int] = ..., llm_cache_hits: _Optional[int] = ..., active_seconds: _Optional[float] = ..., candidates_extra: _Optional[int] = ..., candidates_reused: _Optional[int] = ..., ensembles_scored: _Optional[int] = ..., llm_context_trims: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "spec", "state", "stop_reason", "best", "counters", "created_unix", "updated_unix", "ensemble")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: RunSpec
    state: RunState
    stop_reason: str
    best: _containers.RepeatedCompositeFieldContainer[ScoredTemplate]
    counters: Counters
    created_unix: float
    updated_unix: float
    ensemble: ScoredEnsemble
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ..., state: _Optional[_Union[RunState, str]] = ..., stop_reason: _Optional[str] = ..., best: _Optional[_Iterable[_Union[ScoredTemplate, _Mapping]]] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., ensemble: _Optional[_Union[ScoredEnsemble, _Mapping]] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("sequence", "run_id", "time_unix", "candidate_scored", "iteration_done", "new_best", "run_ended")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORED_FIELD_NUMBER: _ClassVar[int]
    ITERATION_DONE_FIELD_NUMBER: _ClassVar[int]
    NEW_BEST_FIELD_NUMBER: _ClassVar[int]
    RUN_ENDED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    run_id: str
    time_unix: float
    candidate_scored: CandidateScored
    iteration_done: IterationDone
    new_best: NewBest
    run_ended: RunEnded
    def __init__(self, sequence: _Optional[int] = ..., run_id: _Optional[str] = ..., time_unix: _Optional[float] = ..., candidate_scored: _Optional[_Union[CandidateScored, _Mapping]] = ..., iteration_done: _Optional[_Union[IterationDone, _Mapping]] = ..., new_best: _Optional[_Union[NewBest, _Mapping]] = ..., run_ended: _Optional[_Union[RunEnded, _Mapping]] = ...) -> None: ...

class CandidateScored(_message.Message):
    __slots__ = ("template", "train_accuracy", "restart", "reset", "iteration", "llm_call", "candidate_sequence", "reused")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    LLM_CALL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    template: str
    train_accuracy: float
    restart: int
    reset: int
    iteration: int
    llm_call: str
    candidate_sequence: int
    reused: bool
    def __init__(self, template: _Optional[str] = ..., train_accuracy: _Optional[float] = ..., restart: _Optional[int] = ..., reset: _Optional[int] = ..., iteration: _Optional[int] = ..., llm_call: _Optional[str] = ..., candidate_sequence: _Optional[int] = ..., reused: _Optional[bool] = ...) -> None: ...

class IterationDone(_message.Message):
    __slots__ = ("restart", "reset", "iteration", "best_train_accuracy", "mean_train_accuracy", "counters")
    RESTART_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    BEST_TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MEAN_TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    restart: int
    reset: int
    iteration: int
    best_train_accuracy: float
    mean_train_accuracy: float
    counters: Counters
    def __init__(self, restart: _Optional[int] = ..., reset: _Optional[int] = ..., iteration: _Optional[int] = ..., best_train_accuracy: _Optional[float] = ..., mean_train_accuracy: _Optional[float] = ..., counters: _Optional[_Union[Counters, _Mapping]] = ...) -> None: ...

class NewBest(_message.Message):
    __slots__ = ("template", "train_accuracy")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    template: str
    train_accuracy: float
    def __init__(self, template: _Optional[str] = ..., train_accuracy: _Optional[float] = ...) -> None: ...

class RunEnded(_message.Message):
    __slots__ = ("state", "stop_reason", "best", "ensemble")
    STATE_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    state: RunState
    stop_reason: str
    best: _containers.RepeatedCompositeFieldContainer[ScoredTemplate]
    ensemble: ScoredEnsemble
    def __init__(self, state: _Optional[_Union[RunState, str]] = ..., stop_reason: _Optional[str] = ..., best: _Optional[_Iterable[_Union[ScoredTemplate, _Mapping]]] = ..., ensemble: _Optional[_Union[ScoredEnsemble, _Mapping]] = ...) -> None: ...
