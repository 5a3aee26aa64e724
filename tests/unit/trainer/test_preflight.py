from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from kubetune.contract import RunSummary
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.preflight import check
from kubetune_trainer.runtime import Runtime

from .conftest import memorise_spec, write_jsonl


def test_good_data_passes_with_its_counts(runtime: Runtime) -> None:
    summary = check(memorise_spec("lora", ["adapter"]), runtime)

    assert summary.reason == "DataValid"
    assert summary.message == "8 of 8 examples ready to train"


def test_bad_data_fails_the_preflight_with_the_trainer_message(runtime: Runtime, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    write_jsonl(claims / "data" / "train.jsonl", [{"messages": [{"role": "tool", "content": "x"}]}])

    with pytest.raises(InvalidData, match=r"train.jsonl line 1: messages\[0\]: unknown role 'tool'"):
        check(memorise_spec("lora", ["adapter"]), dataclasses.replace(runtime, volumes=claims, output_override=None))
    assert sorted(p.name for p in claims.iterdir()) == ["data"], "a refused job leaves its output claim as it was"


def test_a_cache_that_cannot_be_written_does_not_fail_the_preflight(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    assert runtime.output_override is not None
    blocked = runtime.output_override / "checkpoints" / ".kubetune"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the cache's folder would be")

    summary = check(memorise_spec("lora", ["adapter"]), runtime)

    assert summary.reason == "DataValid"
    assert "the tokenised data could not be kept" in caplog.text


def test_an_auto_sized_job_gets_the_models_facts_from_its_config_through_the_termination_message(
    runtime: Runtime,
) -> None:
    from kubetune.controller.observe import JobState, PodState
    from kubetune.controller.reconcile import Attempt, reported_facts
    from kubetune.estimate import read_model_facts
    from kubetune_trainer.summary import termination_message

    config = json.loads((runtime.volumes / "models" / "tiny-phi3" / "config.json").read_text())

    summary = check(memorise_spec("lora", ["adapter"], resources={"accelerators": "auto"}), runtime)

    pod = PodState(name="p", index=0, phase="Succeeded", summary=RunSummary.parse(termination_message(summary)))
    passed = Attempt(JobState(name="demo-preflight", attempt=0, suspended=False, complete=True), (pod,))
    assert reported_facts(passed) == read_model_facts(config)
    assert check(memorise_spec("lora", ["adapter"]), runtime).model_facts is None  # it sized itself


def test_a_config_that_cannot_size_the_model_fails_the_preflight_naming_the_field(
    runtime: Runtime, tmp_path: Path
) -> None:
    claims = tmp_path / "claims"
    shutil.copytree(runtime.volumes, claims)
    config_file = claims / "models" / "tiny-phi3" / "config.json"
    config = json.loads(config_file.read_text())
    del config["num_hidden_layers"]
    config_file.write_text(json.dumps(config))
    spec = memorise_spec("lora", ["adapter"], resources={"accelerators": "auto"})

    with pytest.raises(
        InvalidSpec, match=r"spec.model: cannot size models:tiny-phi3 .*config.json has no num_hidden_layers"
    ):
        check(spec, dataclasses.replace(runtime, volumes=claims))
