from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TRAIN: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]
SPLIT_UNSPECIFIED: Split
SPLIT_TRAIN: Split
SPLIT_TEST: Split

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "class_names", "num_classes", "splits", "model_name", "shots", "seed", "context_length")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    num_classes: int
    splits: _containers.RepeatedCompositeFieldContainer[SplitInfo]
    model_name: str
    shots: int
    seed: int
    context_length: int
    def __init__(self, task_id: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., num_classes: _Optional[int] = ..., splits: _Optional[_Iterable[_Union[SplitInfo, _Mapping]]] = ..., model_name: _Optional[str] = ..., shots: _Optional[int] = ..., seed: _Optional[int] = ..., context_length: _Optional[int] = ...) -> None: ...

class SplitInfo(_message.Message):
    __slots__ = ("split", "num_images")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    split: Split
    num_images: int
    def __init__(self, split: _Optional[_Union[Split, str]] = ..., num_images: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("task_id", "templates", "split", "ensembles")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    split: Split
    ensembles: _containers.RepeatedCompositeFieldContainer[TemplateEnsemble]
    def __init__(self, task_id: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ..., split: _Optional[_Union[Split, str]] = ..., ensembles: _Optional[_Iterable[_Union[TemplateEnsemble, _Mapping]]] = ...) -> None: ...

class TemplateEnsemble(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, templates: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "split", "ensemble_results")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TemplateScore]
    split: Split
    ensemble_results: _containers.RepeatedCompositeFieldContainer[EnsembleScore]
    def __init__(self, results: _Optional[_Iterable[_Union[TemplateScore, _Mapping]]] = ..., split: _Optional[_Union[Split, str]] = ..., ensemble_results: _Optional[_Iterable[_Union[EnsembleScore, _Mapping]]] = ...) -> None: ...

class EnsembleScore(_message.Message):
    __slots__ = ("templates", "accuracy", "correct", "total", "error")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedScalarFieldContainer[str]
    accuracy: float
    correct: int
    total: int
    error: str
    def __init__(self, templates: _Optional[_Iterable[str]] = ..., accuracy: _Optional[float] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class TemplateScore(_message.Message):
    __slots__ = ("template", "accuracy", "correct", "total", "error")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    template: str
    accuracy: float
    correct: int
    total: int
    error: str
    def __init__(self, template: _Optional[str] = ..., accuracy: _Optional[float] = ..., correct: _Optional[int] = ..., total: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
