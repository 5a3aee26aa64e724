"""One training run, from a validated spec to outputs and a summary, in three phases that
each run alone (as torchtune's recipes do): prepare (data, tokenizer, arguments, model),
fit (the Trainer's loop), finish (evaluation, samples, outputs, summary, card, report).

The order matters: every row is read and checked before the tokenizer or the model is
loaded, so bad data costs seconds, not accelerator time. The preflight runs the prepare
phase's data part (prepare_data) alone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback

from kubetune.api.enums import Precision, StrategyType
from kubetune.api.spec import FineTuneJobSpec
from kubetune.catalog import Strategy
from kubetune.contract import EngineFacts, Figures, HistoryRecord, RunSummary, SummaryOutput
from kubetune_trainer.arguments import learning_rate, training_arguments
from kubetune_trainer.card import model_card
from kubetune_trainer.checkpoints import CheckpointMirror, CompletionMarker, newest_complete
from kubetune_trainer.compiling import compiled_layers, planned_tokens, wants_compile
from kubetune_trainer.data.cache import CheckedData, check_data
from kubetune_trainer.data.pipeline import PreparedData
from kubetune_trainer.engine import EngineCheck, engine_facts, record
from kubetune_trainer.errors import Interrupted
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.model import (
    ModelSource,
    apply_method,
    fetch_once,
    load_model,
    load_tokenizer,
    resolve_source,
    trainable_parameters,
)
from kubetune_trainer.outputs import (
    check_destination,
    check_formats,
    checkpoint_folder,
    checkpoint_mirror,
    output_folder,
    output_location,
    publish,
    write_outputs,
)
from kubetune_trainer.preference import load_reference
from kubetune_trainer.progress import Progress, ProgressTracker, TokenMeter
from kubetune_trainer.ranks import any_rank, barrier
from kubetune_trainer.report import write_report
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.samples import SAMPLES, Sample, fill
from kubetune_trainer.strategy import leave_the_process_group, shards_weights, skip_inference_comm_op, trains_alone
from kubetune_trainer.tasks import task_for
from kubetune_trainer.tasks.base import Task
from kubetune_trainer.tasks.labels import LabelMap
from kubetune_trainer.tracking import tracking_environment
from kubetune_trainer.trainers import ListDataset
from kubetune_trainer.warm import warm_start_folder

log = logging.getLogger(__name__)


class AlreadyTrained(Exception):
    """Raised as train() starts when the checkpoint it resumed from holds every step."""


class StopWhenTrained(TrainerCallback):
    """Ends train() before its first step when the checkpoint it resumed from holds every step:
    a pod killed while it wrote the outputs, or the same run started again. The Trainer itself
    would train one step past maxSteps wherever maxSteps is not a whole number of epochs (it
    resumes the last epoch after the batches already trained, and checks the limit after a step)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps > 0:
            raise AlreadyTrained


@dataclass
class StopOnSignal(TrainerCallback):
    """On SIGTERM (preemption, eviction, suspend) or Ctrl-C, finish the step, checkpoint and stop.

    With several ranks, every rank stops at the same step when any one of them was signalled:
    an evicted pod's ranks get the signal and the other pods' do not, and a checkpoint is a
    collective that every rank must join at the same step. The ranks agree at the end of
    each step (one all-reduce of a flag)."""

    received: bool = False
    """This rank was signalled."""
    stopping: bool = False
    """Some rank was signalled: this one has checkpointed with the others and stopped."""
    _previous: dict[int, Any] = field(default_factory=dict, repr=False)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("%s: writing a checkpoint after this step, then stopping", signal.Signals(signum).name)
        self.received = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if any_rank(self.received):
            self.stopping = True
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class RunData:
    """The data part of the prepare phase: the checked examples, the tokenizer (with the
    task's template) and the data it tokenised."""

    checked: CheckedData
    tokenizer: Any
    default_template: bool
    """Whether the task set its own chat template (the tokenizer had none)."""
    data: PreparedData

    @property
    def labels(self) -> LabelMap | None:
        return self.checked.labels


@dataclass
class Prepared:
    """What the prepare phase leaves: everything fit needs, nothing trained yet."""

    spec: FineTuneJobSpec
    runtime: Runtime
    started: float
    device: str
    precision: Precision
    task: Task
    out: Path
    checkpoint_dir: Path
    mirror: CheckpointMirror | None
    source: ModelSource
    run_data: RunData
    resume: Path | None
    args: Any
    settings: dict[str, Any]
    model: Any
    trainable: int
    total: int
    reference: Any = None
    """The frozen reference model a dpo spec names (None: the base itself, or no reference)."""


@dataclass
class Fitted:
    """What the fit phase leaves: the trainer after training, and what it measured."""

    trainer: Any
    tracker: ProgressTracker
    scorer: Any
    respond: Callable[[Sample], str]
    chosen: list[Sample]
    compiled: int
    facts: EngineFacts
    runtime_seconds: float | None
    """None when the checkpoint resumed from held every step and nothing was trained."""


def train(spec: FineTuneJobSpec, runtime: Runtime, listeners: Sequence[Callable[[Progress], None]] = ()) -> RunSummary:
    """Train as the spec says and return the summary. Raises TrainerError subclasses."""
    prepared = prepare(spec, runtime)
    return finish(prepared, fit(prepared, listeners))


def prepare_data(
    spec: FineTuneJobSpec, runtime: Runtime, checked: CheckedData, source: ModelSource, kept_by: str
) -> RunData:
    """Tokenise checked data with the model's tokenizer (the task's template set), keeping
    the result where the next pod looks (rank 0 only). The preflight runs this too."""
    tokenizer = load_tokenizer(source, runtime)
    default_template = task_for(spec.task, spec.objective).prepare_tokenizer(tokenizer)
    data = checked.tokenize(tokenizer, write=runtime.is_main, kept_by=kept_by)
    log.info("data: %s", data.stats.summary().as_json())
    return RunData(checked, tokenizer, default_template, data)


def prepare(spec: FineTuneJobSpec, runtime: Runtime) -> Prepared:
    """Check the destinations and the data, then load the tokenizer, the arguments and the
    model. Every row is read and checked before the model is fetched."""
    started = time.monotonic()
    hardware = Hardware.detect()
    precision = hardware.precision(spec.training.precision)
    check_formats(spec)
    check_destination(spec, runtime)
    task = task_for(spec.task, spec.objective, spec.preference)
    out = output_folder(spec, runtime)
    checkpoint_dir = checkpoint_folder(spec, runtime, out)
    mirror = checkpoint_mirror(spec, runtime)
    if mirror is not None:  # a new pod's scratch is empty: fetch what the bucket holds (and check it can be read)
        mirror.restore(checkpoint_dir)
    checked = check_data(spec, runtime)  # the preflight's cache, else the dataset read and checked
    source = fetch_once(resolve_source(spec, runtime), runtime)
    run_data = prepare_data(spec, runtime, checked, source, kept_by="a training run")
    data = run_data.data
    # The arguments come before the model: under ZeRO-3 they set up the process group and
    # make from_pretrained place each rank's shard straight away.
    resume = newest_complete(checkpoint_dir)
    os.environ.update(tracking_environment(spec, runtime, out))
    if trains_alone(spec, runtime.world_size):
        leave_the_process_group(os.environ)
    if spec.distributed.strategy is StrategyType.DEEPSPEED:
        skip_inference_comm_op()
    args = training_arguments(
        spec,
        precision,
        hardware.device == "cpu",
        runtime.world_size,
        checkpoint_dir,
        bool(data.eval),
        run_name=runtime.job_name,
        # A resumed run has no untrained model left to measure.
        evaluate_first=resume is None,
        task_arguments=task.arguments(data.eval, spec.dataset),
    )
    if args.deepspeed:
        _start_deepspeed(args, checkpoint_dir, runtime)
    settings = task.model_kwargs(run_data.labels, run_data.tokenizer)
    warm_start = warm_start_folder(spec, runtime)  # a bad source fails before the model loads
    model = apply_method(load_model(spec, source, precision, runtime, settings), spec, source, warm_start)
    reference = load_reference(spec, runtime, precision, sharded=shards_weights(args))
    trainable, total = trainable_parameters(model)
    log.info("model %s: %d of %d parameters trainable", source.display, trainable, total)
    return Prepared(
        spec=spec,
        runtime=runtime,
        started=started,
        device=hardware.device,
        precision=precision,
        task=task,
        out=out,
        checkpoint_dir=checkpoint_dir,
        mirror=mirror,
        source=source,
        run_data=run_data,
        resume=resume,
        args=args,
        settings=settings,
        model=model,
        trainable=trainable,
        total=total,
        reference=reference,
    )


def fit(prepared: Prepared, listeners: Sequence[Callable[[Progress], None]] = ()) -> Fitted:
    """Train the prepared model, from the newest complete checkpoint if there is one. Raises
    Interrupted when a signal stopped it (after a checkpoint)."""
    p, spec, runtime = prepared, prepared.spec, prepared.runtime
    tokenizer, labels, data = p.run_data.tokenizer, p.run_data.labels, p.run_data.data
    p.out.mkdir(parents=True, exist_ok=True)
    meter = TokenMeter()
    tracker = ProgressTracker(
        meter,
        runtime.world_size,
        metrics_file=p.out / "metrics.jsonl" if runtime.is_main else None,
        listeners=list(listeners),
        speaks=runtime.is_main,
    )
    stopper = StopOnSignal()
    scorer = p.task.metrics(tokenizer, labels)
    reference = {"reference": p.reference} if p.reference is not None else {}
    trainer = p.task.trainer_class()(
        model=p.model,
        args=p.args,
        train_dataset=ListDataset(data.train),
        eval_dataset=ListDataset(data.eval) if data.eval else None,
        data_collator=p.task.collator(tokenizer, spec.dataset, p.model),
        processing_class=tokenizer,
        compute_metrics=scorer,
        preprocess_logits_for_metrics=scorer.preprocess if scorer else None,
        callbacks=[tracker, CompletionMarker(p.checkpoint_dir, runtime.is_main, barrier, p.mirror), stopper],
        meter=meter,
        **reference,
    )
    respond = p.task.answerer(p.model, tokenizer, labels, data.format)
    examples = p.run_data.checked.examples
    shown = examples.eval or examples.train
    chosen = p.task.pick(shown, labels, SAMPLES) if runtime.is_main and _whole_model(spec) else []
    if not spec.method.type.uses_adapter:
        fill(chosen, respond, "before")
    trainer.add_callback(EngineCheck(trainer, spec.distributed.strategy))
    trainer.add_callback(StopWhenTrained())
    trainer.remove_callback(PrinterCallback)  # the tracker logs each record, and listeners show progress
    if p.resume is not None:
        log.info("resuming from %s", p.resume)
    mean_length = data.stats.tokens / max(1, data.stats.kept)
    planned = planned_tokens(spec, len(data.train), mean_length, runtime.world_size)
    runtime_seconds: float | None = None
    with compiled_layers(p.model, wants_compile(spec, planned, p.device)) as compiled:
        try:
            result = trainer.train(resume_from_checkpoint=str(p.resume) if p.resume else None)
            runtime_seconds = round(result.metrics.get("train_runtime", 0.0), 2)
        except AlreadyTrained:
            # The checkpoint's weights (and under DeepSpeed its engine) are loaded by now.
            if runtime.is_main:
                log.info("%s holds all %d steps: nothing is left to train", p.resume, trainer.state.global_step)
            trainer.is_in_train = False
            trainer.control = trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    facts = engine_facts(trainer, p.total)
    record(facts, runtime.work / "ranks", runtime.rank)
    if stopper.stopping:
        raise Interrupted(f"stopped by a signal at step {trainer.state.global_step}; the checkpoint is kept")
    return Fitted(trainer, tracker, scorer, respond, chosen, compiled, facts, runtime_seconds)


def finish(prepared: Prepared, fitted: Fitted) -> RunSummary:
    """Evaluate, answer the samples, write the outputs, then the summary, the model card and
    the report beside them (rank 0), and publish."""
    p, spec, runtime = prepared, prepared.spec, prepared.runtime
    metrics, baseline = _evaluate(p, fitted)
    if spec.method.type.uses_adapter:
        # The base model is the adapter switched off (and a new head as it was initialised):
        # no generation touches a 4-bit base before training (bitsandbytes repacks CPU
        # weights on their first inference).
        with p.model.disable_adapter():
            fill(fitted.chosen, fitted.respond, "before")
    fill(fitted.chosen, fitted.respond, "after")
    tokenizer, labels = p.run_data.tokenizer, p.run_data.labels
    formats = write_outputs(
        fitted.trainer,
        spec,
        p.source,
        tokenizer,
        p.precision,
        p.out,
        runtime.work,
        runtime,
        barrier,
        p.settings,
        labels,
    )
    metrics = metrics.model_copy(update={"wall_seconds": round(time.monotonic() - p.started, 2)})
    output = SummaryOutput(location=output_location(spec, runtime, p.out), formats=[f.value for f in formats])
    summary = summarise(p, fitted, metrics, baseline, output)
    if runtime.is_main:
        write_run_files(summary, spec, p.out)
        # An image's digest is known only once it is pushed.
        pushed = output.model_copy(update={"location": publish(spec, runtime, p.out)})
        summary = summary.model_copy(update={"output": pushed})
    return summary


def _evaluate(p: Prepared, fitted: Fitted) -> tuple[Figures, Figures]:
    """The run's figures, with the final evaluation's; and the evaluation of the untrained
    model (the baseline), where the run made one."""
    trainer, tracker = fitted.trainer, fitted.tracker
    trained = Figures(
        steps=trainer.state.global_step,
        train_loss=_last_loss(tracker.history),
        trainable_parameters=p.trainable,
        total_parameters=p.total,
        tokens_per_second=tracker.progress.tokens_per_second,
        learning_rate=learning_rate(p.spec),
        precision=p.precision.value,
        compiled_layers=fitted.compiled,
        train_runtime_seconds=fitted.runtime_seconds,
    )
    if not p.run_data.data.eval:
        return trained, Figures()
    final = p.task.summary_figures(trainer.evaluate())
    baseline = p.task.summary_figures(_evaluation_at_start(tracker.history))
    # The task's figures are named by the task (camelCase), so they join by name.
    return Figures.model_validate(trained.as_json() | final.as_json()), baseline


def summarise(p: Prepared, fitted: Fitted, metrics: Figures, baseline: Figures, output: SummaryOutput) -> RunSummary:
    """The summary of a finished run, from what the phases left."""
    run_data, labels = p.run_data, p.run_data.labels
    return RunSummary(
        status="Succeeded",
        reason="Completed",
        message=_trained(fitted.trainer.state.global_step, run_data.data.stats.kept, fitted.runtime_seconds is None),
        output=output,
        metrics=metrics,
        engine=fitted.facts,
        data=run_data.data.stats.summary(default_chat_template=run_data.default_template),
        model=p.source.display,
        method=p.spec.method.type.value,
        task=p.spec.task.value,
        baseline=baseline,
        history=fitted.tracker.history,
        samples=[sample.answers() for sample in fitted.chosen],
        labels=list(labels.names) if labels is not None else None,
        # The final evaluation's confusion matrix, for classification.
        confusion=fitted.scorer.confusion if fitted.scorer is not None else None,
    )


def _trained(steps: int, examples: int, in_checkpoint: bool) -> str:
    trained = f"trained {steps} steps on {examples} examples"
    return f"{trained} (every step was in the checkpoint resumed from)" if in_checkpoint else trained


def write_run_files(summary: RunSummary, spec: FineTuneJobSpec, out: Path) -> None:
    """The model card (README.md), the report and summary.json beside the outputs: each made
    from the summary (and the spec) alone."""
    (out / "README.md").write_text(model_card(spec, summary))
    write_report(summary, spec, out)
    (out / "summary.json").write_text(summary.dumps())


def _start_deepspeed(args: Any, checkpoint_dir: Path, runtime: Runtime) -> None:
    """Join DeepSpeed's own process group before any model is built: ZeRO-3 shards weights
    as they load, and DeepSpeed reads the world size from its group, not torch's (without
    this, CPU ranks each believe they are alone and the batch-size check fails)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend=args.ddp_backend or "nccl")
    if runtime.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / "deepspeed.json").write_text(json.dumps(args.deepspeed, indent=2) + "\n")


def _whole_model(spec: FineTuneJobSpec) -> bool:
    """Whether rank 0 holds the whole model and can generate alone (not under ZeRO-3 or FSDP)."""
    return spec.matrix_strategy not in (Strategy.ZERO3, Strategy.FSDP)


def _evaluation_at_start(history: list[HistoryRecord]) -> dict[str, float]:
    """The evaluation before the first step (the untrained model), under the Trainer's names,
    or nothing when the run did not start from step 0."""
    first = next((record for record in history if record.step == 0 and record.eval_loss is not None), None)
    return dict(first.logged()) if first is not None else {}


def _last_loss(history: list[HistoryRecord]) -> float | None:
    """The last training loss logged."""
    return next((record.loss for record in reversed(history) if record.loss is not None), None)
