"""From a DatasetSpec to tokenised training and evaluation sets, with the counts a person
reads in the report. Everything here runs before a model is loaded, so bad data fails
fast and cheaply (the operator's preflight Job runs exactly this)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from kubetune.api import DataFormat, TaskType
from kubetune.api.enums import Objective
from kubetune.api.spec import DatasetSource, DatasetSpec
from kubetune_trainer.data.formats import Example, detect_format, to_example
from kubetune_trainer.data.sources import source_rows
from kubetune_trainer.data.tokenize import DataStats
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tasks import task_for
from kubetune_trainer.tasks.base import Task
from kubetune_trainer.tasks.labels import LabelMap, build_label_map


@dataclass(frozen=True)
class PreparedData:
    train: list[Any]
    """What the task trains on: token ids with their targets (for causal-lm, maybe packed)."""
    eval: list[Any]
    stats: DataStats
    format: DataFormat


def read_examples(
    source: DatasetSource,
    fmt: DataFormat,
    runtime: Runtime,
    task: TaskType = TaskType.CAUSAL_LM,
    objective: Objective = Objective.SFT,
) -> tuple[list[Example], DataFormat]:
    """Every row of a source checked and converted; `auto` resolved from the first row among
    the formats the task reads under the objective."""
    examples: list[Example] = []
    for row in source_rows(source, runtime):
        if fmt is DataFormat.AUTO:
            fmt = detect_format(row, objective.formats(task))
        examples.append(to_example(fmt, row))
    if not examples:
        raise InvalidData(f"the {source.kind} dataset has no examples")
    return examples, fmt


def split_for_evaluation(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a fraction of the examples (at least one, never all), chosen with the seed."""
    if len(examples) < 2:
        raise InvalidData(f"{len(examples)} example(s) cannot be split for evaluation; give more or drop evaluation")
    held = min(max(1, math.floor(len(examples) * fraction)), len(examples) - 1)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held])
    train = [e for i, e in enumerate(examples) if i not in chosen]
    return train, [examples[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class ExampleSets:
    """Checked examples, before any tokenizer: what a preflight validates."""

    train: list[Example]
    eval: list[Example]
    format: DataFormat


def read_dataset(
    dataset: DatasetSpec,
    runtime: Runtime,
    seed: int,
    task: TaskType = TaskType.CAUSAL_LM,
    objective: Objective = Objective.SFT,
) -> ExampleSets:
    """Read and check every row, and split off the evaluation examples. Needs no model."""
    examples, fmt = read_examples(dataset, dataset.format, runtime, task, objective)
    held_out: list[Example] = []
    evaluation = dataset.evaluation
    if evaluation is not None and evaluation.fraction is not None:
        examples, held_out = split_for_evaluation(examples, evaluation.fraction, seed)
    elif evaluation is not None and evaluation.source is not None:
        held_out, _ = read_examples(evaluation.source, fmt, runtime, task, objective)
    return ExampleSets(examples, held_out, fmt)


def label_map(sets: ExampleSets, dataset: DatasetSpec, task: TaskType) -> LabelMap | None:
    """The label names of a classification task (None for the others), checked against every
    example. Needs no model: the model's head is built to their number."""
    if not task.has_labels:
        return None
    values = task_for(task).label_values
    return build_label_map(values(sets.train), values(sets.eval), dataset.labels)


def tokenize_dataset(
    sets: ExampleSets,
    dataset: DatasetSpec,
    tokenizer: Any,
    task: TaskType = TaskType.CAUSAL_LM,
    labels: LabelMap | None = None,
    objective: Objective = Objective.SFT,
) -> PreparedData:
    return arrange(encode_dataset(sets, dataset, tokenizer, task, labels, objective), dataset, task, objective)


@dataclass(frozen=True)
class EncodedData:
    """Every kept example encoded on its own, before the task arranges the training items:
    what the preflight's cache holds, since packing depends on nothing the cache is keyed by."""

    train: list[Any]
    eval: list[Any]
    stats: DataStats
    format: DataFormat


def encode_dataset(
    sets: ExampleSets,
    dataset: DatasetSpec,
    tokenizer: Any,
    task: TaskType = TaskType.CAUSAL_LM,
    labels: LabelMap | None = None,
    objective: Objective = Objective.SFT,
) -> EncodedData:
    stats = DataStats(detected_format=sets.format.value)
    encoder = task_for(task, objective)
    train = _tokenize_all(sets.train, tokenizer, dataset, encoder, labels, stats)
    if not train:
        raise InvalidData(
            f"no example is left to train on: {stats.dropped_too_long} longer than maxSeqLength "
            f"{dataset.max_seq_length}, {stats.dropped_nothing_to_learn} with nothing to learn"
        )
    eval_set = _tokenize_all(sets.eval, tokenizer, dataset, encoder, labels, DataStats())
    return EncodedData(train, eval_set, stats, sets.format)


def arrange(
    encoded: EncodedData,
    dataset: DatasetSpec,
    task: TaskType = TaskType.CAUSAL_LM,
    objective: Objective = Objective.SFT,
) -> PreparedData:
    training = task_for(task, objective).arrange(encoded.train, dataset)
    return PreparedData(training, encoded.eval, encoded.stats, encoded.format)


def _tokenize_all(
    examples: list[Example],
    tokenizer: Any,
    dataset: DatasetSpec,
    task: Task,
    labels: LabelMap | None,
    stats: DataStats,
) -> list[Any]:
    encode = task.encode
    encoded = (encode(example, tokenizer, dataset, labels, stats) for example in examples)
    return [item for item in encoded if item is not None]
