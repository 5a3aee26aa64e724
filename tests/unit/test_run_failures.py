"""What `kubetune run` prints when the job fails: kubetune's one line, once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from click.testing import CliRunner

from kubetune.cli import cli

MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: facts}
data:
  facts.jsonl: |
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    {"messages": [{"role": "tool", "content": "a role the chat format does not have"}]}
---
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: defect}
spec:
  model: {preset: phi-3-mini-4k-instruct}
  dataset: {configMap: {name: facts, key: facts.jsonl}, format: chat, preflight: false}
  method: {type: lora}
  output: {pvc: {claimName: results}}
  training: {maxSteps: 2}
"""


@contextmanager
def logging_as_a_fresh_interpreter_has_it() -> Iterator[None]:
    """No handler on the root logger, as in `python -m kubetune` (pytest adds its own, which
    would swallow what a library or the trainer logs instead of printing it)."""
    root = logging.getLogger()
    kept = root.handlers[:]
    root.handlers.clear()
    try:
        yield
    finally:
        root.handlers[:] = kept


def test_a_dataset_defect_is_said_once_in_kubetunes_words_and_nothing_comes_before_it(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(MANIFEST)

    with logging_as_a_fresh_interpreter_has_it():
        result = CliRunner().invoke(cli, ["run", str(manifest), "--volumes", str(tmp_path / "volumes")])

    assert result.exit_code == 42, result.output
    failures = [line for line in result.output.splitlines() if "unknown role 'tool'" in line]
    assert len(failures) == 1, result.output
    assert failures[0].startswith("DatasetInvalid: "), result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("training defect: lora on phi-3-mini-4k-instruct")
    assert lines[1] == failures[0]  # no empty progress line between
    assert "kernels" not in result.output
