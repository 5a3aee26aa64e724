"""The preflight Job's program: read, check and tokenise the dataset on a CPU, before any
accelerator is requested. A bad dataset fails here, with the trainer's own message; a good
one is left tokenised on the checkpoint volume, where the training run picks it up."""

from __future__ import annotations

import logging
import os
import sys

from kubetune.api.facts import ModelFacts, needs_model_facts
from kubetune.api.spec import FineTuneJobSpec
from kubetune.contract import ExitCode, PodEnvironment, RunSummary
from kubetune.estimate import UnreadableConfig, read_model_facts
from kubetune_trainer.data.cache import read_data
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.logs import configure_pod_logging
from kubetune_trainer.model import fetch_config, resolve_source
from kubetune_trainer.mounts import access_denied, writable
from kubetune_trainer.outputs import checkpoint_folder, output_folder
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.summary import write_summary

log = logging.getLogger("kubetune_trainer.preflight")


def check(spec: FineTuneJobSpec, runtime: Runtime) -> RunSummary:
    """The data summary of a dataset that passed, or a TrainerError saying why it did not."""
    from kubetune_trainer.train import prepare_data

    # The training run's data phase, on data always read (never a cache): the model's
    # tokenizer alone is fetched, not its weights.
    prepared = prepare_data(spec, runtime, read_data(spec, runtime), resolve_source(spec, runtime), "the preflight")
    # After the data: a job refused for its data leaves nothing on its output claim.
    check_destinations(spec, runtime)
    data, labels = prepared.data, prepared.labels
    stats = data.stats.summary(eval_examples=len(data.eval), labels=list(labels.names) if labels is not None else None)
    return RunSummary(
        status="Succeeded",
        reason="DataValid",
        message=f"{stats.kept} of {stats.examples} examples ready to train",
        data=stats,
        model_facts=model_facts(spec, runtime) if needs_model_facts(spec) else None,
    )


def model_facts(spec: FineTuneJobSpec, runtime: Runtime) -> ModelFacts:
    """What the operator sizes an `accelerators: auto` job from, read from the model's
    config.json (no weights are fetched): the model is not a preset, whose size it knows."""
    source = resolve_source(spec, runtime)
    try:
        return read_model_facts(fetch_config(source, runtime))
    except UnreadableConfig as error:
        raise InvalidSpec(
            f"spec.model: cannot size {spec.model.display} for resources.accelerators: auto: {error}; "
            "set resources.accelerators"
        ) from None


def check_destinations(spec: FineTuneJobSpec, runtime: Runtime) -> None:
    """The output and checkpoint folders on claims can be written: a run that cannot write them
    fails at its first checkpoint or at its end, after the accelerators' hours."""
    output = output_folder(spec, runtime)
    for folder, what in ((checkpoint_folder(spec, runtime, output), "checkpoints"), (output, "output")):
        if folder.is_relative_to(runtime.volumes):
            writable(folder, what)


def main() -> None:
    from kubetune_trainer.main import read_spec

    configure_pod_logging()
    termination_log = PodEnvironment.termination_log_in(os.environ)
    try:
        runtime = Runtime.from_env()  # a bad setting in the pod's environment is refused here
        termination_log = runtime.termination_log
        summary = check(read_spec(runtime.spec), runtime)
        code = ExitCode.OK
    except Exception as error:  # a file's permissions speak through many libraries' types
        failure = error if isinstance(error, TrainerError) else access_denied(error)
        if failure is None:
            raise
        summary, code = RunSummary.failure(failure.reason, str(failure)), failure.exit_code
        log.error("%s: %s", failure.reason, failure)
    write_summary(summary, termination_log)
    sys.exit(int(code))


if __name__ == "__main__":
    main()
