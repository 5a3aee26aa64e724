"""`kubetune run` refuses an invalid manifest before it trains (the quickstart's run itself is
in tests/integration/trainer/test_run.py)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from kubetune.cli import cli


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
