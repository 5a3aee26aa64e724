"""The spec's training settings as transformers TrainingArguments (the task's kind of them): a
pure translation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api import Precision
from kubetune.api.enums import Optimizer, Scheduler
from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.strategy import strategy_arguments
from kubetune_trainer.tasks import task_for

OPTIMIZERS = {
    Optimizer.ADAMW: "adamw_torch",
    Optimizer.ADAMW_FUSED: "adamw_torch_fused",
    Optimizer.ADAMW_8BIT: "adamw_bnb_8bit",
    Optimizer.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    Optimizer.PAGED_ADAMW_32BIT: "paged_adamw_32bit",
    Optimizer.ADAFACTOR: "adafactor",
    Optimizer.SGD: "sgd",
}

SCHEDULERS = {
    Scheduler.LINEAR: "linear",
    Scheduler.COSINE: "cosine",
    Scheduler.COSINE_WITH_MIN_LR: "cosine_with_min_lr",
    Scheduler.CONSTANT: "constant",
    Scheduler.CONSTANT_WITH_WARMUP: "constant_with_warmup",
    Scheduler.POLYNOMIAL: "polynomial",
    Scheduler.INVERSE_SQRT: "inverse_sqrt",
}

DEFAULT_LEARNING_RATE = {True: 2e-4, False: 2e-5}  # by "trains an adapter"
DEFAULT_WARMUP_RATIO = 0.03


def learning_rate(spec: FineTuneJobSpec) -> float:
    return spec.training.learning_rate or DEFAULT_LEARNING_RATE[spec.method.type.uses_adapter]


def training_arguments(
    spec: FineTuneJobSpec,
    precision: Precision,
    on_cpu: bool,
    world_size: int,
    checkpoint_dir: Path,
    has_eval: bool,
    run_name: str | None = None,
    evaluate_first: bool = False,
    task_arguments: dict[str, Any] | None = None,
) -> Any:
    """The task's TrainingArguments class, filled from the spec. `evaluate_first` measures the
    evaluation split before the first step (the baseline the run is compared with);
    `task_arguments` are the task's own (seq2seq: generate in evaluation)."""
    training = spec.training
    if training.warmup_steps is not None:
        warmup: float = training.warmup_steps
    else:
        warmup = training.warmup_ratio if training.warmup_ratio is not None else DEFAULT_WARMUP_RATIO
    evaluate = has_eval and training.eval_interval is not None
    return task_for(spec.task).arguments_class()(
        output_dir=str(checkpoint_dir),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=learning_rate(spec),
        lr_scheduler_type=SCHEDULERS[training.scheduler],
        lr_scheduler_kwargs={"min_lr_rate": 0.1} if training.scheduler is Scheduler.COSINE_WITH_MIN_LR else None,
        warmup_steps=warmup,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        optim=OPTIMIZERS[training.optimizer],
        per_device_train_batch_size=training.per_device_batch_size,
        per_device_eval_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        bf16=precision is Precision.BF16,
        fp16=precision is Precision.FP16,
        use_cpu=on_cpu,
        seed=training.seed,
        data_seed=training.seed,
        logging_steps=training.logging_interval,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=training.eval_interval if evaluate else None,
        eval_on_start=has_eval and evaluate_first,
        label_names=["labels"],
        save_strategy="steps",
        save_steps=spec.checkpoint.interval_steps,
        save_total_limit=spec.checkpoint.keep,
        report_to=[training.tracking.backend.value] if training.tracking else "none",
        run_name=run_name,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        # NCCL needs GPUs; gloo carries collectives between CPU processes.
        ddp_backend="gloo" if on_cpu and world_size > 1 else None,
        **strategy_arguments(spec, on_cpu),
        **(task_arguments or {}),
    )
