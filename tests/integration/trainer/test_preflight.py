"""The preflight's tokenised data, taken up by the training run that follows it."""

from __future__ import annotations

import logging

import pytest

from kubetune.contract import ExitCode
from kubetune_trainer.preflight import check
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tasks import task_for

from .conftest import memorise_spec


@pytest.mark.slow  # it trains, for two steps
def test_the_training_run_reuses_what_the_preflight_tokenised(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    from kubetune_trainer.data.pipeline import label_map, read_dataset, tokenize_dataset
    from kubetune_trainer.main import run
    from kubetune_trainer.model import load_tokenizer, resolve_source

    spec = memorise_spec("lora", ["adapter"], training={"maxSteps": 2})
    caplog.set_level(logging.INFO, logger="kubetune_trainer.data.cache")
    preflight = check(spec, runtime)
    tokenizer = load_tokenizer(resolve_source(spec, runtime), runtime)
    default_template = task_for(spec.task).prepare_tokenizer(tokenizer)
    sets = read_dataset(spec.dataset, runtime, spec.training.seed, spec.task)
    uncached = tokenize_dataset(sets, spec.dataset, tokenizer, spec.task, label_map(sets, spec.dataset, spec.task))

    code, summary = run(spec, runtime)

    assert code is ExitCode.OK, summary
    assert "reused the tokenised data from the preflight (8 training and 0 evaluation examples" in caplog.text
    assert summary.data == uncached.stats.summary(default_chat_template=default_template)
    assert preflight.data == uncached.stats.summary(eval_examples=0)
