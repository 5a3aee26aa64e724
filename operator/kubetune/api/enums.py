"""The closed vocabularies of the API. Each concept is one enum, dispatched in one place."""

from __future__ import annotations

import enum


class MethodType(enum.StrEnum):
    """How the model is adapted."""

    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    FULL = "full"

    @property
    def uses_adapter(self) -> bool:
        return self is not MethodType.FULL


class QuantType(enum.StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class DType(enum.StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Precision(enum.StrEnum):
    """Numeric precision of training. auto: bf16 where the hardware has it, else fp16 on
    accelerators without bf16, else fp32."""

    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Compile(enum.StrEnum):
    """Whether the trainer compiles the model's repeated layers with torch.compile. auto: on a
    CPU, where the planned run trains enough tokens for the compile to pay back, under a setup
    it is tested with (one process or DDP, no 4-bit base). Not on/off: YAML 1.1 reads those
    as booleans."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class DataFormat(enum.StrEnum):
    AUTO = "auto"
    CHAT = "chat"
    INSTRUCTION = "instruction"
    PROMPT_COMPLETION = "prompt-completion"
    TEXT = "text"
    TEXT_LABEL = "text-label"
    TOKENS_TAGS = "tokens-tags"
    SOURCE_TARGET = "source-target"
    PREFERENCE = "preference"


class TaskType(enum.StrEnum):
    """What the model learns to do, which decides its head, its data and its metrics."""

    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TOKEN_CLASSIFICATION = "token-classification"
    SEQ2SEQ = "seq2seq"

    @property
    def formats(self) -> tuple[DataFormat, ...]:
        """The data formats the task reads, in the order `auto` tries them."""
        return TASK_FORMATS[self]

    @property
    def has_labels(self) -> bool:
        """Whether the task predicts one of a closed set of labels (and saves their names)."""
        return self in {TaskType.SEQUENCE_CLASSIFICATION, TaskType.TOKEN_CLASSIFICATION}


TASK_FORMATS: dict[TaskType, tuple[DataFormat, ...]] = {
    TaskType.CAUSAL_LM: (DataFormat.CHAT, DataFormat.INSTRUCTION, DataFormat.PROMPT_COMPLETION, DataFormat.TEXT),
    TaskType.SEQUENCE_CLASSIFICATION: (DataFormat.TEXT_LABEL,),
    TaskType.TOKEN_CLASSIFICATION: (DataFormat.TOKENS_TAGS,),
    TaskType.SEQ2SEQ: (DataFormat.SOURCE_TARGET, DataFormat.PROMPT_COMPLETION),
}


class Objective(enum.StrEnum):
    """What the training optimises. sft: the likelihood of the answers (supervised fine-tuning).
    dpo (direct preference optimisation) and orpo (odds-ratio preference optimisation): that
    the model prefers the chosen answer of each pair to the rejected one; dpo measures the
    preference against a frozen reference model, orpo against nothing but adds the chosen
    answer's likelihood to its loss."""

    SFT = "sft"
    DPO = "dpo"
    ORPO = "orpo"

    @property
    def prefers(self) -> bool:
        """Whether the objective learns from pairs of a chosen and a rejected answer."""
        return self is not Objective.SFT

    @property
    def uses_reference(self) -> bool:
        """Whether the loss compares the model with a frozen reference model."""
        return self is Objective.DPO

    def formats(self, task: TaskType) -> tuple[DataFormat, ...]:
        """The data formats a task reads under this objective, in the order `auto` tries them."""
        return (DataFormat.PREFERENCE,) if self.prefers else task.formats


class PreferenceLoss(enum.StrEnum):
    """How dpo turns the margin between the chosen and the rejected answer's implicit rewards
    into a loss (TRL's DPOConfig.loss_type of the same names). sigmoid: the DPO paper's
    -log sigmoid(beta * margin); hinge: the SLiC hinge max(0, 1 - beta * margin); ipo: the
    IPO paper's squared distance of the margin from 1 / (2 beta)."""

    SIGMOID = "sigmoid"
    HINGE = "hinge"
    IPO = "ipo"


class Truncation(enum.StrEnum):
    """What happens to an example longer than maxSeqLength."""

    TRUNCATE = "truncate"
    DROP = "drop"


class Scheduler(enum.StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_MIN_LR = "cosine-with-min-lr"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant-with-warmup"
    POLYNOMIAL = "polynomial"
    INVERSE_SQRT = "inverse-sqrt"


class Optimizer(enum.StrEnum):
    ADAMW = "adamw"
    ADAMW_FUSED = "adamw-fused"
    ADAMW_8BIT = "adamw-8bit"
    PAGED_ADAMW_8BIT = "paged-adamw-8bit"
    PAGED_ADAMW_32BIT = "paged-adamw-32bit"
    ADAFACTOR = "adafactor"
    SGD = "sgd"

    @property
    def needs_bitsandbytes(self) -> bool:
        return self in {Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW_32BIT}

    @property
    def paged(self) -> bool:
        return self in {Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW_32BIT}


class TrackingBackend(enum.StrEnum):
    MLFLOW = "mlflow"
    WANDB = "wandb"
    TENSORBOARD = "tensorboard"


class StrategyType(enum.StrEnum):
    """How training processes share the work. auto: one process alone, else DDP."""

    AUTO = "auto"
    NONE = "none"
    DDP = "ddp"
    DEEPSPEED = "deepspeed"
    FSDP = "fsdp"


class FsdpSharding(enum.StrEnum):
    FULL_SHARD = "full-shard"
    SHARD_GRAD_OP = "shard-grad-op"
    HYBRID_SHARD = "hybrid-shard"
    NO_SHARD = "no-shard"


class OutputFormat(enum.StrEnum):
    ADAPTER = "adapter"
    MERGED = "merged"
    ONNX = "onnx"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def finished(self) -> bool:
        return self in {Phase.SUCCEEDED, Phase.FAILED}


class TrainerPhase(enum.StrEnum):
    """What rank 0 is doing, as its progress reports it."""

    STARTING = "starting"
    """Reading data, tokenizer and model."""
    TRAINING = "training"
    SAVING = "saving"
    """Past the training loop: evaluation, samples, outputs and their upload."""


class ConditionType(enum.StrEnum):
    VALID = "Valid"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
