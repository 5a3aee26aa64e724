"""The contenders. Each trains in a process of its own: `python -m bench.contenders RUN_DIR`.

RUN_DIR/run.json (a `RunSpec`, written by the harness) says what to train. The contender
writes RUN_DIR/result.json: when its training loop began and ended on the monotonic clock
(which every process on the machine shares, so the harness can set it against the moment
it started the process), the optimizer steps and tokens the trainer itself counted, and
the checkpoint it wrote at its last step; then the process ends, so what a trainer does
after training (outputs, reports, sample answers) is neither measured nor waited for.

Only the trainer differs between contenders: the model is loaded with the same dtypes,
the adapter has the same settings, and the loop the same steps, batch, schedule and
optimizer. Each writes one checkpoint, at the end of its loop, as all of them do by
default (kubetune always; Kaito's "epoch" strategy; TRL's "steps" strategy).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.workload import Setting

KUBETUNE = "kubetune"
TRL_KAITO = "trl-kaito"
TRL_PADDING_FREE = "trl-padding-free"
TRL_PACKING = "trl-packing"
KUBETUNE_COMPILED = "kubetune-compiled"
TRL_PADDING_FREE_COMPILED = "trl-padding-free-compiled"
TRL_PACKING_COMPILED = "trl-packing-compiled"
CONTENDERS = (
    KUBETUNE,
    TRL_KAITO,
    TRL_PADDING_FREE,
    TRL_PACKING,
    KUBETUNE_COMPILED,
    TRL_PADDING_FREE_COMPILED,
    TRL_PACKING_COMPILED,
)
"""The last three compile (opt-in: on 2 CPU cores the compile takes longer than the
benchmark's whole training loop, which includes it)."""
KUBETUNES = frozenset({KUBETUNE, KUBETUNE_COMPILED})
"""kubetune's own configurations: never counted as the fastest TRL."""
TRL_BEST = (TRL_PADDING_FREE, TRL_PACKING)
"""TRL at its best: padding-free or packing, whichever is faster. Both run in the first
round of a setting; the slower one sits out the rest."""
ROW_BATCHED = frozenset({TRL_PACKING, TRL_PACKING_COMPILED})
"""Contenders whose batches count packed rows, not examples: they train one epoch of the
same tokens in about the same number of steps, as near as whole rows allow."""
DESCRIPTIONS = {
    KUBETUNE: "kubetune's trainer, from a FineTuneJob manifest through `kubetune run`'s local runner",
    TRL_KAITO: "TRL SFTTrainer as Kaito's tuning image sets it: per-device batch 1, no packing, accumulation",
    TRL_PADDING_FREE: "TRL SFTTrainer with padding-free batches (examples laid end to end, no padding)",
    TRL_PACKING: "TRL SFTTrainer with best-fit-decreasing packing into max-length rows",
    KUBETUNE_COMPILED: "kubetune's trainer with training.compile: always (each decoder layer compiled)",
    TRL_PADDING_FREE_COMPILED: "TRL SFTTrainer padding-free, with torch_compile=True (the whole model compiled)",
    TRL_PACKING_COMPILED: "TRL SFTTrainer with packing, with torch_compile=True (the whole model compiled)",
}

# What the benchmark's ZeRO-3 runs use with TRL: transformers' documented ZeRO-3 config,
# every size left to "auto" so the training arguments fill it.
ZERO3: dict[str, Any] = {
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": "auto"},
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}


@dataclass(frozen=True)
class RunSpec:
    """One contender's run: everything the child process needs, as plain data."""

    contender: str
    method: str
    precision: str
    zero3: bool
    model: str
    train: str
    steps: int
    effective_batch: int
    per_device_batch: int
    learning_rate: float
    warmup_steps: int
    lora_r: int
    lora_alpha: int
    max_length: int
    seed: int
    accelerators: int

    @property
    def setting(self) -> Setting:
        return Setting(self.method, self.precision, self.zero3)  # type: ignore[arg-type]

    @property
    def accumulation(self) -> int:
        return self.effective_batch // self.per_device_batch

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> RunSpec:
        return cls(**json.loads((folder / "run.json").read_text()))


@dataclass
class Clock:
    """Marks the training loop's beginning and end. At the end it writes the run's result
    and ends the process: what a trainer does after training (outputs, reports, samples)
    is not measured, and the weights to evaluate are in the checkpoint every contender
    writes at its last step."""

    folder: Path
    began: float | None = None
    cpu_began: float = 0.0

    def begin(self) -> None:
        if self.began is None:
            _synchronize()
            self.began, self.cpu_began = time.monotonic(), time.process_time()

    def end(self, steps: int, tokens: int | None) -> None:
        import torch

        _synchronize()
        ended, cpu = time.monotonic(), time.process_time()
        result = {
            "trainBegan": self.began,
            "trainEnded": ended,
            "trainCpuSeconds": cpu - self.cpu_began,
            "threads": torch.get_num_threads(),
            "acceleratorPeakMiB": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "steps": steps,
            "tokens": tokens,
            "checkpoint": str(last_checkpoint(self.folder)),
        }
        (self.folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        logging.shutdown()
        os._exit(0)


def last_checkpoint(folder: Path) -> Path:
    """The checkpoint written at the last step (both kubetune and TRL write them here)."""
    found = sorted((folder / "output" / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not found:
        raise RuntimeError(f"no checkpoint under {folder / 'output' / 'checkpoints'}")
    return found[-1]


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- kubetune


def kubetune_manifest(run: RunSpec) -> dict[str, Any]:
    """The FineTuneJob a person would write for this run. Claim `bench` is the prepared folder."""
    method: dict[str, Any] = {"type": run.method}
    if run.setting.uses_adapter:
        method["lora"] = {"r": run.lora_r, "alpha": run.lora_alpha, "dropout": 0.0, "targetModules": ["all-linear"]}
    if run.method == "qlora":
        method["quantization"] = {"allowCpu": run.accelerators == 0}
    model_folder = Path(run.model)
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{run.setting.name}"},
        "spec": {
            "model": {"pvc": {"claimName": "bench", "path": model_folder.name}},
            "dataset": {
                "pvc": {"claimName": "bench", "path": str(Path(run.train).relative_to(model_folder.parent))},
                "format": "chat",
                "maxSeqLength": run.max_length,
                "completionOnlyLoss": False,  # every contender trains on whole conversations
                "preflight": False,
            },
            "method": method,
            "training": {
                "maxSteps": run.steps,
                "learningRate": run.learning_rate,
                "warmupSteps": run.warmup_steps,
                "perDeviceBatchSize": run.per_device_batch,
                "gradientAccumulationSteps": run.accumulation,
                "precision": run.precision,
                "seed": run.seed,
                **({"compile": "always"} if run.contender == KUBETUNE_COMPILED else {}),
            },
            "distributed": {"strategy": "deepspeed", "deepspeed": {"stage": 3}} if run.zero3 else {"strategy": "none"},
            "resources": {"accelerators": run.accelerators},
            "checkpoint": {"intervalSteps": run.steps + 1},
            "output": {"pvc": {"claimName": "bench", "path": "unused"}},
        },
    }


def run_kubetune(run: RunSpec, folder: Path) -> None:
    import yaml

    from kubetune.api import parse_finetunejob
    from kubetune.api.enums import TrainerPhase
    from kubetune_trainer.local import LocalPlan, run_local
    from kubetune_trainer.progress import Progress

    manifest = kubetune_manifest(run)
    (folder / "job.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    volumes = folder / "volumes"
    volumes.mkdir(exist_ok=True)
    (volumes / "bench").symlink_to(Path(run.model).parent)
    plan = LocalPlan(
        job=parse_finetunejob(manifest),
        volumes=volumes,
        work=folder / "work",
        secrets=folder / "secrets",
        output=folder / "output",
        processes=1,
        config_maps={},
    )
    clock = Clock(folder)

    def listen(progress: Progress) -> None:
        if progress.phase is TrainerPhase.TRAINING:
            clock.begin()
        elif progress.phase is TrainerPhase.SAVING:  # the end of the training loop
            clock.end(int(last_checkpoint(folder).name.split("-")[1]), tokens=None)

    _, summary = run_local(plan, listen)
    raise RuntimeError(f"kubetune ended before its training loop did: {summary.reason}: {summary.message}")


# ----------------------------------------------------------------------------- TRL


def load_base(model: str, method: str, precision: str) -> Any:
    """The base model as kubetune loads it: adapters over a base in the compute dtype (4-bit
    for QLoRA), full fine-tuning over fp32 master weights with the compute dtype autocast."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if precision == "bf16" else torch.float32
    kwargs: dict[str, Any] = {}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
    dtype = torch.float32 if method == "full" else compute
    # The Trainer places an unquantised model on the accelerator itself (or DeepSpeed does).
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa", **kwargs)
    loaded.config.use_cache = False
    return loaded


def lora_config(run: RunSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=run.lora_r,
        lora_alpha=run.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        use_dora=run.method == "dora",
        task_type="CAUSAL_LM",
    )


def trl_arguments(run: RunSpec, folder: Path) -> dict[str, Any]:
    """SFTConfig keywords for a contender (plain data, so they can be checked without a GPU)."""
    import torch

    variants: dict[str, dict[str, Any]] = {
        TRL_KAITO: {"packing": False, "padding_free": False, "max_length": run.max_length},
        # Every example already fits max_length, and TRL enforces no length when padding-free.
        TRL_PADDING_FREE: {"packing": False, "padding_free": True, "max_length": None},
        TRL_PACKING: {"packing": True, "packing_strategy": "bfd", "max_length": run.max_length},
    }
    variants[TRL_PADDING_FREE_COMPILED] = variants[TRL_PADDING_FREE] | {"torch_compile": True}
    variants[TRL_PACKING_COMPILED] = variants[TRL_PACKING] | {"torch_compile": True}
    # Packed rows cannot be counted out to exactly the steps of the others: one epoch instead.
    steps: dict[str, Any] = (
        {"max_steps": -1, "num_train_epochs": 1} if run.contender in ROW_BATCHED else {"max_steps": run.steps}
    )
    return {
        "output_dir": str(folder / "output" / "checkpoints"),
        **steps,
        "per_device_train_batch_size": run.per_device_batch,
        "gradient_accumulation_steps": run.accumulation,
        "learning_rate": run.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": run.warmup_steps,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch_fused",
        "bf16": run.precision == "bf16",
        "use_cpu": not torch.cuda.is_available(),
        # SFTConfig turns checkpointing on by default; kubetune's default and Kaito's are off.
        "gradient_checkpointing": False,
        "seed": run.seed,
        "data_seed": run.seed,
        "logging_steps": 10,
        # One checkpoint, at the end, as kubetune writes (and Kaito's "epoch" strategy does).
        "save_strategy": "epoch" if run.contender == TRL_KAITO else "steps",
        "save_steps": run.steps + 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **({"deepspeed": dict(ZERO3)} if run.zero3 else {}),
        **variants[run.contender],
    }


def run_trl(run: RunSpec, folder: Path) -> None:
    import torch
    from datasets import Dataset
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, TrainerCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    class Timed(TrainerCallback):
        def __init__(self, clock: Clock) -> None:
            self.clock = clock

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.clock.begin()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.clock.end(state.global_step, getattr(trainer, "_total_train_tokens", None))

    class EmptyCache(TrainerCallback):
        """Kaito's tuning image empties the CUDA cache after every step."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            torch.cuda.empty_cache()

    # SFTConfig must exist before the model under ZeRO-3, as in kubetune (it shards at load).
    args = SFTConfig(**trl_arguments(run, folder))
    tokenizer = AutoTokenizer.from_pretrained(run.model)
    model = load_base(run.model, run.method, run.precision)
    rows = [json.loads(line) for line in Path(run.train).read_text().splitlines()]
    clock = Clock(folder)
    callbacks: list[Any] = [Timed(clock)]
    peft_config = lora_config(run) if run.setting.uses_adapter else None
    if run.contender == TRL_KAITO:
        # Kaito wraps the model itself (after kbit preparation for QLoRA) and empties the cache each step.
        if run.method == "qlora":
            model = prepare_model_for_kbit_training(model)
        if peft_config is not None:
            model, peft_config = get_peft_model(model, peft_config), None
        if torch.cuda.is_available():
            callbacks.append(EmptyCache())
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.train()
    raise RuntimeError("TRL's training loop ended without its on_train_end")


# ----------------------------------------------------------------------------- entry point


RUNNERS: dict[str, Callable[[RunSpec, Path], None]] = {
    contender: run_kubetune if contender in KUBETUNES else run_trl for contender in CONTENDERS
}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    run = RunSpec.read(folder)
    RUNNERS[run.contender](run, folder)  # ends the process at the end of training


if __name__ == "__main__":
    main()
