"""Every shipped example validates against the CRD schema, its CEL rules and the models (the
task examples train in tests/integration/trainer/test_examples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import KIND, DataFormat, MethodType, StrategyType, TaskType, parse_finetunejob
from kubetune.manifests import read_documents
from kubetune.validate import validate_document

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    verdicts = [validate_document(d) for d in read_documents(path)]

    assert any(not v.skipped for v in verdicts), "no FineTuneJob in the example"
    for verdict in verdicts:
        assert verdict.ok, [str(p) for p in verdict.problems]


def test_examples_cover_the_methods_and_layouts_people_start_from() -> None:
    specs = [parse_finetunejob(d.body).spec for p in EXAMPLES for d in read_documents(p) if d.body.get("kind") == KIND]

    assert {s.method.type for s in specs} == set(MethodType)
    assert any(
        s.resources.nodes > 1
        and s.distributed.strategy is StrategyType.DEEPSPEED
        and s.distributed.deepspeed
        and s.distributed.deepspeed.stage == 3
        for s in specs
    )
    assert any(s.resources.accelerators == 0 for s in specs)
    assert any(s.model.preset and s.model.preset.startswith("phi-3") for s in specs)
    assert {s.task for s in specs} == set(TaskType)
    causal_formats = {s.dataset.format for s in specs if s.task is TaskType.CAUSAL_LM}
    assert {DataFormat.PROMPT_COMPLETION, DataFormat.CHAT} <= causal_formats
