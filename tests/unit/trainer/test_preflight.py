from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kubetune_trainer.errors import InvalidData
from kubetune_trainer.preflight import check
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec, write_jsonl


def test_good_data_passes_with_its_counts(runtime: Runtime) -> None:
    summary = check(memorise_spec("lora", ["adapter"]), runtime)

    assert summary["reason"] == "DataValid"
    assert summary["message"] == "8 of 8 examples ready to train"


def test_bad_data_fails_the_preflight_with_the_trainer_message(runtime: Runtime, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    write_jsonl(claims / "data" / "train.jsonl", [{"messages": [{"role": "tool", "content": "x"}]}])

    with pytest.raises(InvalidData, match=r"train.jsonl line 1: messages\[0\]: unknown role 'tool'"):
        check(memorise_spec("lora", ["adapter"]), dataclasses.replace(runtime, volumes=claims))


def test_a_cache_that_cannot_be_written_does_not_fail_the_preflight(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    assert runtime.output_override is not None
    blocked = runtime.output_override / "checkpoints" / ".kubetune"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the cache's folder would be")

    summary = check(memorise_spec("lora", ["adapter"]), runtime)

    assert summary["reason"] == "DataValid"
    assert "the tokenised data could not be kept" in caplog.text
