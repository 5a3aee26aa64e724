"""The tasks a FineTuneJob can train, one module each; `task_for` is the only dispatch on
the spec's task and objective (a preference objective tunes a causal-lm model its own way)."""

from __future__ import annotations

from kubetune.api import TaskType
from kubetune.api.enums import Objective
from kubetune.api.spec import PreferenceSpec
from kubetune_trainer.tasks.base import Task
from kubetune_trainer.tasks.causal_lm import CausalLm
from kubetune_trainer.tasks.preference import Preference
from kubetune_trainer.tasks.seq2seq import Seq2Seq
from kubetune_trainer.tasks.sequence_classification import SequenceClassification
from kubetune_trainer.tasks.token_classification import TokenClassification

TASKS: dict[TaskType, Task] = {
    TaskType.CAUSAL_LM: CausalLm(),
    TaskType.SEQUENCE_CLASSIFICATION: SequenceClassification(),
    TaskType.TOKEN_CLASSIFICATION: TokenClassification(),
    TaskType.SEQ2SEQ: Seq2Seq(),
}


def task_for(task: TaskType, objective: Objective = Objective.SFT, preference: PreferenceSpec | None = None) -> Task:
    """The task as the objective trains it (the API allows a preference objective for causal-lm only)."""
    if objective.prefers:
        return Preference(objective, preference)
    return TASKS[task]
