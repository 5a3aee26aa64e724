"""The task and objective halves of the support matrix: which strategies each task beyond causal-lm trains
with. It lives in the same file as the method rows (`support-matrix.yaml`, key `tasks`);
causal-lm is what those rows describe. Every method and output that a method row supports
works for every task, so a task row only says whether the strategy carries the task and
what the trainer's tests assert for it. An objective row (key `objectives`) says the same of a
preference objective (dpo, orpo) with each method and strategy; sft is what the method rows
describe.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from kubetune.api.enums import MethodType, Objective, TaskType
from kubetune.catalog import Strategy


class _Data(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class RowKey(_Data):
    task: TaskType
    strategy: Strategy


class TaskRow(RowKey):
    supported: bool
    reason: str | None = None
    asserts: str | None = None
    needs: str | None = None
    """"accelerator" when the row runs only with GPUs."""
    covered_by: RowKey | None = None
    """A row the tests do not run on its own: the row whose run takes the same paths (the
    same engine with the same head handling, or the same head under a stricter engine)."""

    @property
    def needs_accelerator(self) -> bool:
        return self.needs == "accelerator"


@cache
def task_rows() -> tuple[TaskRow, ...]:
    text = resources.files("kubetune").joinpath("data", "support-matrix.yaml").read_text()
    return tuple(TaskRow.model_validate(row) for row in yaml.safe_load(text)["tasks"])


def task_row(task: TaskType, strategy: Strategy) -> TaskRow | None:
    """The row of a task beyond causal-lm and a strategy; None for causal-lm (the method rows)."""
    for row in task_rows():
        if (row.task, row.strategy) == (task, strategy):
            return row
    return None


class ObjectiveKey(_Data):
    objective: Objective
    method: MethodType
    strategy: Strategy


class ObjectiveRow(ObjectiveKey):
    supported: bool
    reason: str | None = None
    asserts: str | None = None
    covered_by: ObjectiveKey | None = None
    """A row the tests do not run on its own: the row whose run takes the same paths."""


@cache
def objective_rows() -> tuple[ObjectiveRow, ...]:
    text = resources.files("kubetune").joinpath("data", "support-matrix.yaml").read_text()
    return tuple(ObjectiveRow.model_validate(row) for row in yaml.safe_load(text)["objectives"])


def objective_row(objective: Objective, method: MethodType, strategy: Strategy) -> ObjectiveRow | None:
    """The row of a preference objective, a method and a strategy; None for sft (the method rows)."""
    for row in objective_rows():
        if (row.objective, row.method, row.strategy) == (objective, method, strategy):
            return row
    return None
