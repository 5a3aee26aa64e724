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
    assert "done: trained 80 steps on" in result.output
    assert "  after:    QLoRA trains LoRA adapters over a 4-bit base." in result.output
    assert "  expected: QLoRA trains LoRA adapters over a 4-bit base." in result.output
    out = volumes / "results" / "quickstart"
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
