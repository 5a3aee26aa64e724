"""`kubetune run` on the quickstart: the README's main job, end to end, on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetune.cli import cli

pytestmark = pytest.mark.slow


def test_quickstart_trains_and_answers_what_it_was_taught(repo: Path, tmp_path: Path) -> None:
    manifest = repo / "examples" / "quickstart.yaml"
    volumes = tmp_path / "volumes"
    runner = CliRunner()

    made = runner.invoke(cli, ["make-tiny-model", str(volumes / "models" / "tiny-phi3"), "--corpus", str(manifest)])
    result = runner.invoke(cli, ["run", str(manifest), "--volumes", str(volumes)])

    assert made.exit_code == 0, made.output
    assert result.exit_code == 0, result.output
    assert "done: 80 steps" in result.output
    assert "  after:    QLoRA trains LoRA adapters over a 4-bit base." in result.output
    assert "  expected: QLoRA trains LoRA adapters over a 4-bit base." in result.output
    out = volumes / "results" / "quickstart"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()


def test_run_refuses_an_invalid_manifest_with_every_problem(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\n"
        "spec:\n  model: {preset: phi-3-mini-4k-instruct}\n  method: {type: full, lora: {r: 4}}\n"
        "  dataset: {configMap: {name: d, key: d.jsonl}}\n  output: {pvc: {claimName: r}}\n"
        "  training: {epochs: 1, maxSteps: 3}\n"
    )

    result = CliRunner().invoke(cli, ["run", str(manifest)])

    assert result.exit_code == 1
    assert "spec.method.lora: full fine-tuning trains every weight" in result.output
    assert "spec.training.epochs: set epochs or maxSteps, not both" in result.output
