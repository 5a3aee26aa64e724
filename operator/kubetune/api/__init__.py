"""The FineTuneJob API (group kubetune.io, version v1alpha1): the single place it is written."""

from kubetune.api.enums import (
    ConditionStatus,
    ConditionType,
    DataFormat,
    MethodType,
    OutputFormat,
    Phase,
    Precision,
    StrategyType,
    TaskType,
    Truncation,
)
from kubetune.api.problems import InvalidSpec, Problem
from kubetune.api.resource import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FineTuneJob,
    parse_finetunejob,
)
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import Condition, FineTuneJobStatus, Progress

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DataFormat",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "InvalidSpec",
    "MethodType",
    "OutputFormat",
    "Phase",
    "Precision",
    "Problem",
    "Progress",
    "StrategyType",
    "TaskType",
    "Truncation",
    "parse_finetunejob",
]
