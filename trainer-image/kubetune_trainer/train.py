"""One training run, from a validated spec to outputs and a summary.

The order matters: every row is read and checked before the tokenizer or the model is
loaded, so bad data costs seconds, not accelerator time.
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

from kubetune.api.spec import FineTuneJobSpec
from kubetune.catalog import Strategy
from kubetune.contract import RunSummary, SummaryOutput
from kubetune_trainer.arguments import learning_rate, training_arguments
from kubetune_trainer.card import model_card
from kubetune_trainer.checkpoints import CompletionMarker, newest_complete
from kubetune_trainer.compiling import compiled_layers, planned_tokens, wants_compile
from kubetune_trainer.data.cache import check_data
from kubetune_trainer.engine import EngineCheck, engine_facts, record
from kubetune_trainer.errors import Interrupted
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.model import (
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
from kubetune_trainer.progress import Progress, ProgressTracker, TokenMeter
from kubetune_trainer.ranks import any_rank, barrier
from kubetune_trainer.report import write_report
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.samples import SAMPLES, fill
from kubetune_trainer.strategy import leave_the_process_group, trains_alone
from kubetune_trainer.tasks import task_for
from kubetune_trainer.tracking import tracking_environment
from kubetune_trainer.trainers import ListDataset
from kubetune_trainer.warm import warm_start_folder

log = logging.getLogger(__name__)


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


def train(spec: FineTuneJobSpec, runtime: Runtime, listeners: Sequence[Callable[[Progress], None]] = ()) -> RunSummary:
    """Train as the spec says and return the summary. Raises TrainerError subclasses."""
    started = time.monotonic()
    hardware = Hardware.detect()
    precision = hardware.precision(spec.training.precision)
    check_formats(spec)
    check_destination(spec, runtime)
    task = task_for(spec.task)
    out = output_folder(spec, runtime)
    checkpoint_dir = checkpoint_folder(spec, runtime, out)
    mirror = checkpoint_mirror(spec, runtime)
    if mirror is not None:  # a new pod's scratch is empty: fetch what the bucket holds (and check it can be read)
        mirror.restore(checkpoint_dir)
    checked = check_data(spec, runtime)  # the preflight's cache, else the dataset read and checked
    examples, labels = checked.examples, checked.labels

    source = fetch_once(resolve_source(spec, runtime), runtime)
    tokenizer = load_tokenizer(source, runtime)
    default_template = task.prepare_tokenizer(tokenizer)
    data = checked.tokenize(tokenizer, write=runtime.is_main)
    log.info("data: %s", data.stats.as_dict())

    # The arguments come before the model: under ZeRO-3 they set up the process group and
    # make from_pretrained place each rank's shard straight away.
    resume = newest_complete(checkpoint_dir)
    os.environ.update(tracking_environment(spec, runtime, out))
    if trains_alone(spec, runtime.world_size):
        leave_the_process_group(os.environ)
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
    settings = task.model_kwargs(labels, tokenizer)
    warm_start = warm_start_folder(spec, runtime)  # a bad source fails before the model loads
    loaded = load_model(spec, source, precision, runtime, settings)
    model = apply_method(loaded, spec, source, warm_start)
    trainable, total = trainable_parameters(model)
    log.info("model %s: %d of %d parameters trainable", source.display, trainable, total)

    out.mkdir(parents=True, exist_ok=True)
    meter = TokenMeter()
    tracker = ProgressTracker(
        meter, runtime.world_size, out / "metrics.jsonl" if runtime.is_main else None, list(listeners)
    )
    stopper = StopOnSignal()
    scorer = task.metrics(tokenizer, labels)
    trainer = task.trainer_class()(
        model=model,
        args=args,
        train_dataset=ListDataset(data.train),
        eval_dataset=ListDataset(data.eval) if data.eval else None,
        data_collator=task.collator(tokenizer, spec.dataset, model),
        processing_class=tokenizer,
        compute_metrics=scorer,
        preprocess_logits_for_metrics=scorer.preprocess if scorer else None,
        callbacks=[tracker, CompletionMarker(checkpoint_dir, runtime.is_main, barrier, mirror), stopper],
        meter=meter,
    )
    respond = task.answerer(model, tokenizer, labels, data.format)
    shown = examples.eval or examples.train
    chosen = task.pick(shown, labels, SAMPLES) if runtime.is_main and _whole_model(spec) else []
    if not spec.method.type.uses_adapter:
        fill(chosen, respond, "before")
    trainer.add_callback(EngineCheck(trainer, spec.distributed.strategy))
    trainer.remove_callback(PrinterCallback)  # the tracker logs each record, and listeners show progress
    if resume is not None:
        log.info("resuming from %s", resume)
    mean_length = data.stats.tokens / max(1, data.stats.kept)
    planned = planned_tokens(spec, len(data.train), mean_length, runtime.world_size)
    compile_wanted = wants_compile(spec, planned, hardware.device)
    with compiled_layers(model, compile_wanted) as compiled:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    facts = engine_facts(trainer, total)
    record(facts, runtime.work / "ranks", runtime.rank)
    if stopper.stopping:
        raise Interrupted(f"stopped by a signal at step {trainer.state.global_step}; the checkpoint is kept")
    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "trainLoss": _last(tracker.history, "loss"),
        "trainableParameters": trainable,
        "totalParameters": total,
        "tokensPerSecond": tracker.progress.tokens_per_second,
        "learningRate": learning_rate(spec),
        "precision": precision.value,
        "compiledLayers": compiled,
        "trainRuntimeSeconds": round(result.metrics.get("train_runtime", 0.0), 2),
    }
    baseline: dict[str, float] = {}
    if data.eval:
        metrics |= task.summary_figures(trainer.evaluate())
        baseline = task.summary_figures(_evaluation_at_start(tracker.history))
    if spec.method.type.uses_adapter:
        # The base model is the adapter switched off (and a new head as it was initialised):
        # no generation touches a 4-bit base before training (bitsandbytes repacks CPU
        # weights on their first inference).
        with model.disable_adapter():
            fill(chosen, respond, "before")
    fill(chosen, respond, "after")
    formats = write_outputs(
        trainer, spec, source, tokenizer, precision, out, runtime.work, runtime, barrier, settings, labels
    )
    metrics["wallSeconds"] = round(time.monotonic() - started, 2)
    output = SummaryOutput(location=output_location(spec, runtime, out), formats=[f.value for f in formats])
    summary = RunSummary(
        status="Succeeded",
        reason="Completed",
        message=f"trained {trainer.state.global_step} steps on {data.stats.kept} examples",
        output=output,
        metrics=metrics,
        engine=facts,
        data=data.stats.as_dict() | {"defaultChatTemplate": default_template},
        model=source.display,
        method=spec.method.type.value,
        task=spec.task.value,
        baseline=baseline,
        history=tracker.history,
        samples=[sample.as_dict() for sample in chosen],
        labels=list(labels.names) if labels is not None else None,
        confusion=scorer.details.get("confusion") if scorer is not None else None,
    )
    if runtime.is_main:
        (out / "README.md").write_text(model_card(spec, summary))
        write_report(summary, spec, out)
        (out / "summary.json").write_text(summary.dumps())
        # An image's digest is known only once it is pushed.
        pushed = output.model_copy(update={"location": publish(spec, runtime, out)})
        summary = summary.model_copy(update={"output": pushed})
    return summary


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


def _evaluation_at_start(history: list[dict[str, Any]]) -> dict[str, float]:
    """The evaluation before the first step (the untrained model), or nothing when the run
    did not start from step 0."""
    return next((record for record in history if record.get("step") == 0 and "eval_loss" in record), {})


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    values = [record[key] for record in history if key in record]
    return values[-1] if values else None
