"""Reading a task's saved output back outside kubetune (transformers and peft alone) and
measuring it on an evaluation file, to compare with the figure the run reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.api import TaskType


def measure(task: TaskType, output: str, out: Path, volumes: Path, data: str) -> float:
    """The task's figure on data/<data>-eval.jsonl, from the output as saved, outside kubetune."""
    model, tokenizer = _reload(task, output, out)
    rows = [json.loads(line) for line in (volumes / "data" / f"{data}-eval.jsonl").read_text().splitlines()]
    match task:
        case TaskType.SEQUENCE_CLASSIFICATION:
            return _accuracy(model, tokenizer, rows)
        case TaskType.TOKEN_CLASSIFICATION:
            return _entity_f1(model, tokenizer, rows)
        case TaskType.SEQ2SEQ:
            return _bleu(model, tokenizer, rows)
    raise AssertionError(task)


def _reload(task: TaskType, output: str, out: Path) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoTokenizer

    cls = getattr(
        transformers,
        {
            TaskType.SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
            TaskType.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
            TaskType.SEQ2SEQ: "AutoModelForSeq2SeqLM",
        }[task],
    )
    if output == "merged":
        return cls.from_pretrained(out / "merged").eval(), AutoTokenizer.from_pretrained(out / "merged")
    from peft import PeftConfig, PeftModel

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    base = PeftConfig.from_pretrained(out / "adapter").base_model_name_or_path
    kwargs: dict[str, Any] = {}
    if task.has_labels:
        names = json.loads((out / "adapter" / "labels.json").read_text())["labels"]
        kwargs = {"num_labels": len(names), "id2label": dict(enumerate(names)), "pad_token_id": tokenizer.pad_token_id}
    return PeftModel.from_pretrained(cls.from_pretrained(base, **kwargs), out / "adapter").eval(), tokenizer


def _accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    import torch

    with torch.no_grad():
        batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        guesses = model(**batch).logits.argmax(-1).tolist()
    names = model.config.id2label
    return sum(names[g] == r["label"] for g, r in zip(guesses, rows, strict=True)) / len(rows)


def _entity_f1(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    import torch

    from kubetune_trainer.tasks.metrics import entity_scores

    guessed = []
    for row in rows:
        batch = tokenizer(row["tokens"], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ids = model(**batch).logits.argmax(-1)[0].tolist()
        words = batch.word_ids()
        firsts = {w: i for i, w in reversed(list(enumerate(words))) if w is not None}
        guessed.append([model.config.id2label[ids[firsts[w]]] for w in range(len(row["tokens"]))])
    return entity_scores([r["tags"] for r in rows], guessed).f1


def _bleu(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    import torch

    from kubetune_trainer.tasks.metrics import bleu

    written = []
    for row in rows:
        batch = tokenizer(row["source"], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=32, do_sample=False)
        written.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return bleu(written, [r["target"] for r in rows])


def one_example(task: TaskType) -> float:
    """How far a figure may move when one borderline example tips the other way between the
    run's bf16 evaluation and this fp32 reload."""
    return {TaskType.SEQUENCE_CLASSIFICATION: 0.07, TaskType.TOKEN_CLASSIFICATION: 0.1, TaskType.SEQ2SEQ: 15.0}[task]
