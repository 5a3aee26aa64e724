"""The FineTuneJob spec: what to train, on what, how, with which resources, and where the result goes.

These models are the only place the API is written. The CRD schema is generated from
them (`kubetune.crd`), the operator parses objects with them and the trainer reads the
same validated spec.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from kubetune.api.base import (
    ApiModel,
    HubRepoRef,
    HuggingFaceRepo,
    Key,
    KubeObject,
    Name,
    OciReference,
    OneOf,
    PvcLocation,
    Quantity,
    S3Location,
    SecretKeyRef,
    SecretRef,
)
from kubetune.api.enums import (
    Compile,
    DataFormat,
    DType,
    FsdpSharding,
    MethodType,
    Objective,
    Optimizer,
    OutputFormat,
    Precision,
    PreferenceLoss,
    QuantType,
    Scheduler,
    StrategyType,
    TaskType,
    TrackingBackend,
    Truncation,
)
from kubetune.api.rules import spec_problems
from kubetune.catalog import Strategy

ShortText = Annotated[str, Field(max_length=256)]

# ---------------------------------------------------------------------------- model


class ModelSpec(OneOf):
    """The base model: a preset, a Hugging Face repository, or a path on a volume."""

    one_of: ClassVar[tuple[str, ...]] = ("preset", "hugging_face", "pvc")

    preset: Annotated[str, Field(max_length=128)] | None = None
    """Name of a kubetune preset such as phi-3-mini-4k-instruct (`kubetune presets` lists them)."""
    hugging_face: HubRepoRef | None = None
    """A model repository on the Hugging Face Hub."""
    pvc: PvcLocation | None = None
    """A model saved with save_pretrained on a PersistentVolumeClaim."""
    hub_token_secret: SecretKeyRef | None = None
    """Secret key holding a Hugging Face token, for gated models (Llama, Mistral) and private repositories."""
    trust_remote_code: bool = False
    """Run modelling code shipped inside the model repository. Only for repositories you trust."""

    @property
    def display(self) -> str:
        """The model in a few words: preset name, repository id or claim:path."""
        if self.preset:
            return self.preset
        if self.hugging_face:
            return self.hugging_face.repo
        assert self.pvc is not None, "exactly one source is set (checked by the one-of rule)"
        return f"{self.pvc.claim_name}:{self.pvc.path}"


# ---------------------------------------------------------------------------- method


class LoraSpec(ApiModel):
    """Settings of the low-rank adapters (LoRA, QLoRA, DoRA)."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank of the low-rank update matrices."""
    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the adapter's input."""
    target_modules: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=64)] | None
    ) = None
    """Names of the modules to adapt, or [all-linear] for every linear layer but the output
    head. Default: the preset's modules, or [all-linear] for models without a preset."""
    modules_to_save: Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=32)] = []
    """Modules trained in full and saved with the adapter (e.g. a new classification head)."""
    use_rslora: bool = False
    """Rank-stabilised scaling (alpha / sqrt(r)), better at high ranks."""


class QuantizationSpec(ApiModel):
    """4-bit quantisation of the frozen base (bitsandbytes), for QLoRA and QDoRA."""

    type: QuantType = QuantType.NF4
    """Data type of the 4-bit weights: nf4 (NormalFloat, for normally distributed weights) or fp4."""
    double_quant: bool = True
    """Quantise the quantisation constants too (saves about 0.4 bits per parameter)."""
    compute_dtype: DType = DType.BF16
    """Data type the 4-bit weights are dequantised to for matrix products."""
    allow_cpu: bool = False
    """Allow 4-bit training without an accelerator. Slow; meant for tests and small models."""


class MethodSpec(ApiModel):
    """The fine-tuning method and its settings."""

    type: MethodType
    """lora (low-rank adapters), qlora (LoRA over a 4-bit base), dora (weight-decomposed
    LoRA; with a quantization block it is QDoRA) or full (every weight)."""
    lora: LoraSpec | None = None
    """Adapter settings for lora, qlora and dora. Default: r 16, alpha 32, dropout 0.05."""
    quantization: QuantizationSpec | None = None
    """4-bit settings for qlora (default nf4, double quantisation, bf16 compute) or dora (QDoRA)."""

    @property
    def adapter(self) -> LoraSpec:
        """The adapter settings in force (defaults when the block is omitted)."""
        return self.lora or LoraSpec()

    @property
    def quantized(self) -> QuantizationSpec | None:
        """The 4-bit settings in force, or None when the base is not quantised."""
        if self.type is MethodType.QLORA:
            return self.quantization or QuantizationSpec()
        return self.quantization if self.type is MethodType.DORA else None


# ---------------------------------------------------------------------------- objective


class PreferenceSpec(ApiModel):
    """Settings of preference tuning (objective dpo or orpo)."""

    beta: Annotated[float, Field(gt=0, le=100)] = 0.1
    """dpo: how far the model may move from the reference (smaller lets it move further; the
    reward of an answer is beta times its log-probability ratio to the reference's). orpo: the
    weight of the odds-ratio term beside the chosen answer's likelihood (ORPO's lambda)."""
    loss_type: PreferenceLoss | None = None
    """dpo only: sigmoid (the DPO paper's, the default), hinge (SLiC) or ipo."""
    reference: ModelSpec | None = None
    """dpo only: the frozen model the preference is measured against. Default: the base model
    itself (with an adapter method, the base with the adapter switched off, so no second copy)."""

    @property
    def loss(self) -> PreferenceLoss:
        """The loss in force (sigmoid when unset)."""
        return self.loss_type or PreferenceLoss.SIGMOID


# ---------------------------------------------------------------------------- dataset


class UrlSource(ApiModel):
    """A file fetched over HTTPS."""

    url: Annotated[str, Field(pattern=r"^https://", max_length=2048)]
    """HTTPS URL of a jsonl, json, csv or parquet file."""
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", max_length=64)] | None = None
    """Expected SHA-256 of the file; the download is refused when it differs."""


class HuggingFaceDataset(ApiModel):
    """A dataset on the Hugging Face Hub."""

    name: Annotated[str, Field(pattern=r"^[\w\-][\w.\-]*(/[\w\-][\w.\-]*)?$", max_length=256)]
    """Dataset id, owner/name."""
    config: ShortText | None = None
    """Configuration (subset) of the dataset."""
    split: ShortText = "train"
    """Split to read, e.g. train or train[:10%]."""
    revision: ShortText = "main"
    """Branch, tag or commit."""
    token_secret: SecretKeyRef | None = None
    """Secret key holding a Hub token, for gated or private datasets."""


class ConfigMapFile(ApiModel):
    """A small dataset stored inline in a ConfigMap of the job's namespace."""

    name: Name
    """Name of the ConfigMap."""
    key: Key
    """Key holding the file, e.g. train.jsonl; the extension tells the file type."""


class DatasetSource(OneOf):
    """Where examples come from: exactly one of the fields."""

    one_of: ClassVar[tuple[str, ...]] = ("urls", "hugging_face", "pvc", "s3", "config_map")

    urls: Annotated[list[UrlSource], Field(min_length=1, max_length=256)] | None = None
    """Files fetched over HTTPS (jsonl, json, csv or parquet)."""
    hugging_face: HuggingFaceDataset | None = None
    """A dataset on the Hugging Face Hub."""
    pvc: PvcLocation | None = None
    """A file or a folder of files on a PersistentVolumeClaim."""
    s3: S3Location | None = None
    """A file or a prefix of files in S3-compatible object storage."""
    config_map: ConfigMapFile | None = None
    """A small file stored in a ConfigMap."""


class EvaluationSpec(ApiModel):
    """Held-out examples for evaluation loss and task metrics."""

    fraction: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Fraction of the training examples held out (split with the training seed)."""
    source: DatasetSource | None = None
    """A separate evaluation dataset in the same format."""


class DatasetSpec(DatasetSource):
    """The training data: one source, its format, and how examples become sequences."""

    format: DataFormat = DataFormat.AUTO
    """For causal-lm: chat (OpenAI-style messages), instruction (instruction/input/output),
    prompt-completion or text. For sequence-classification: text-label (text, an optional
    text_pair, and label). For token-classification: tokens-tags (tokens and tags, lists of
    equal length, one tag per word). For seq2seq: source-target (source and target) or
    prompt-completion. For objectives dpo and orpo: preference (a prompt, and a chosen and a
    rejected answer, each text or chat messages). auto: detected from the first row among the
    formats of the task (or of the objective), and reported."""
    labels: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=2, max_length=1024)]
        | None
    ) = None
    """Label names in id order, for sequence- and token-classification (for BIO tags: O,
    B-PER, I-PER, ...). Labels given as numbers in the data are ids into this list. Default:
    the names found in the training data, sorted (numbers stand for themselves)."""
    max_seq_length: Annotated[int, Field(ge=16, le=1_048_576)] = 2048
    """Longest sequence in tokens (for seq2seq: the source, and the target each)."""
    truncation: Truncation = Truncation.TRUNCATE
    """What to do with a longer example: truncate it, or drop it. Both are counted."""
    packing: bool = False
    """Pack several examples into each sequence (no attention across examples where the
    model supports it) instead of padding. causal-lm only."""
    completion_only_loss: bool = True
    """Train only on assistant or completion tokens; false trains on the prompt as well.
    causal-lm only (the other tasks learn only their labels or targets)."""
    evaluation: EvaluationSpec | None = None
    """Evaluation split: a fraction of the data or a separate source. Default: none."""
    preflight: bool = True
    """Fetch, validate and tokenise the data in a CPU-only Job before any accelerator is
    requested. Turn off for data reachable only from the training nodes."""


# ---------------------------------------------------------------------------- training


class AdapterSource(OneOf):
    """An adapter trained earlier, to continue from."""

    one_of: ClassVar[tuple[str, ...]] = ("pvc", "s3", "hugging_face", "oci")

    pvc: PvcLocation | None = None
    """A folder with adapter_config.json on a PersistentVolumeClaim."""
    s3: S3Location | None = None
    """A prefix holding the adapter in object storage."""
    hugging_face: HuggingFaceRepo | None = None
    """An adapter repository on the Hugging Face Hub."""
    oci: OciReference | None = None
    """An adapter image in an OCI registry (the layout Kaito serves)."""


class TrackingSpec(ApiModel):
    """Experiment tracking."""

    backend: TrackingBackend
    """mlflow, wandb (Weights & Biases) or tensorboard (written next to the outputs)."""
    uri: Annotated[str, Field(pattern=r"^https?://", max_length=2048)] | None = None
    """Tracking server URL (MLflow: required; W&B: for a self-hosted server)."""
    project: ShortText | None = None
    """Experiment (MLflow) or project (W&B). Default: the FineTuneJob's namespace."""
    run_name: ShortText | None = None
    """Name of the run. Default: the FineTuneJob's name."""
    credentials_secret: SecretRef | None = None
    """Secret with the backend's credentials as environment-style keys
    (WANDB_API_KEY; MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)."""


class TrainingSpec(ApiModel):
    """The optimisation loop."""

    epochs: Annotated[float, Field(gt=0, le=1000)] = 3
    """Passes over the training data (fractions allowed). Ignored when maxSteps is set."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Optimizer steps to run; overrides epochs."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    """Peak learning rate. Default: 2e-4 for adapters, 2e-5 for full fine-tuning."""
    scheduler: Scheduler = Scheduler.COSINE
    """Learning-rate schedule after warm-up."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    """Fraction of the steps spent warming up. Default 0.03 when warmupSteps is unset."""
    warmup_steps: Annotated[int, Field(ge=0)] | None = None
    """Steps spent warming up; use instead of warmupRatio."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Decoupled weight decay."""
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    """Gradients are clipped to this norm; 0 turns clipping off."""
    optimizer: Optimizer = Optimizer.ADAMW_FUSED
    """adamw, adamw-fused, adamw-8bit, paged-adamw-8bit and paged-adamw-32bit (bitsandbytes;
    paged ones need a CUDA device), adafactor, sgd."""
    per_device_batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    """Sequences per device per forward pass."""
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=4096)] = 1
    """Forward passes per optimizer step."""
    precision: Precision = Precision.AUTO
    """bf16, fp16, fp32, or auto (bf16 where the hardware has it)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    compile: Compile = Compile.AUTO
    """Compile each repeated layer (decoder block) with torch.compile, which fuses its
    elementwise work: faster steps after a compile of tens of seconds to minutes. auto: on a
    CPU only (not measured on a GPU yet), where the run trains enough tokens to pay the
    compile back, and not under DeepSpeed, FSDP, gradient checkpointing or a 4-bit base;
    always; never."""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    """Seed of data shuffling, the evaluation split and initialisation."""
    eval_interval: Annotated[int, Field(ge=1)] | None = None
    """Evaluate every this many steps (and always at the end when there is an evaluation split)."""
    logging_interval: Annotated[int, Field(ge=1)] = 10
    """Record metrics every this many steps."""
    warm_start: AdapterSource | None = None
    """Start from an adapter trained earlier instead of a fresh one."""
    tracking: TrackingSpec | None = None
    """Send metrics to MLflow, Weights & Biases or TensorBoard."""


# ---------------------------------------------------------------------------- distributed


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO: shards training state across devices so they pool their memory."""

    stage: Literal[1, 2, 3] = 2
    """1 shards optimizer states, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (slower, frees accelerator memory)."""
    offload_parameters: bool = False
    """Keep parameters in CPU memory (stage 3 only)."""


class FsdpSpec(ApiModel):
    """PyTorch Fully Sharded Data Parallel."""

    sharding: FsdpSharding = FsdpSharding.FULL_SHARD
    """full-shard (parameters, gradients, optimizer), shard-grad-op, hybrid-shard (within a
    node, replicated across nodes) or no-shard."""
    cpu_offload: bool = False
    """Offload parameters and gradients to CPU memory."""


class DistributedSpec(ApiModel):
    """How processes (one per device, on every node) share the work."""

    strategy: StrategyType = StrategyType.AUTO
    """none (one process), ddp, deepspeed, fsdp, or auto (none for one process, else ddp)."""
    deepspeed: DeepSpeedSpec | None = None
    """Settings for strategy deepspeed. Default: ZeRO stage 2, no offload."""
    fsdp: FsdpSpec | None = None
    """Settings for strategy fsdp. Default: full-shard, no offload."""


# ---------------------------------------------------------------------------- resources


class LocalObjectReference(ApiModel):
    name: Name
    """Name of the object."""


AcceleratorCount = Annotated[
    Annotated[int, Field(ge=0, le=64)] | Literal["auto"],
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int ? self >= 0 && self <= 64 : self == 'auto'",
                    "message": "must be a whole number from 0 to 64, or auto",
                }
            ],
        }
    ),
]


class ResourcesSpec(ApiModel):
    """Compute for the trainer pods, one pod per node."""

    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Number of pods (nodes) that train together."""
    accelerators: AcceleratorCount = 1
    """Accelerators per node, 0 for a CPU-only job, or auto to let kubetune size the job."""
    accelerator_resource: Annotated[
        str,
        Field(
            pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
            max_length=253,
        ),
    ] = "nvidia.com/gpu"
    """Extended resource name of the device plugin, e.g. nvidia.com/gpu or amd.com/gpu."""
    cpu: Quantity | None = None
    """CPU request and limit per pod. Default: the preset's, else the operator's."""
    memory: Quantity | None = None
    """Memory request and limit per pod. Default: the preset's, else the operator's."""
    shared_memory: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm (the container default of 64Mi breaks NCCL and data loaders)."""
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=253)]], Field(max_length=64)] = {}
    """Node labels the trainer pods must run on."""
    tolerations: Annotated[list[KubeObject], Field(max_length=64)] = []
    """Tolerations of the trainer pods (Kubernetes Toleration objects)."""
    affinity: KubeObject | None = None
    """Affinity of the trainer pods (a Kubernetes Affinity object)."""
    priority_class_name: Name | None = None
    """PriorityClass of the trainer pods."""
    termination_grace_period_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    """Time a trainer gets after SIGTERM to write a checkpoint."""
    env: Annotated[list[KubeObject], Field(max_length=256)] = []
    """Extra environment variables of the trainer container (Kubernetes EnvVar objects)."""
    volumes: Annotated[list[KubeObject], Field(max_length=64)] = []
    """Extra volumes of the trainer pods (Kubernetes Volume objects)."""
    volume_mounts: Annotated[list[KubeObject], Field(max_length=64)] = []
    """Extra volume mounts of the trainer container (Kubernetes VolumeMount objects)."""
    pod_labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = {}
    """Extra labels of the trainer pods."""
    pod_annotations: Annotated[dict[str, Annotated[str, Field(max_length=65536)]], Field(max_length=64)] = {}
    """Extra annotations of the trainer pods."""
    image: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """Trainer image. Default: the operator's (a GPU or a CPU build, as the job needs)."""
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] = []
    """Secrets for pulling the trainer image."""
    service_account_name: Name | None = None
    """ServiceAccount of the trainer pods (for workload identity); its token is not mounted."""

    @property
    def accelerators_known(self) -> int | None:
        return None if self.accelerators == "auto" else self.accelerators

    @property
    def world_size(self) -> int | None:
        """Training processes in all: one per accelerator, or one per node on CPU."""
        per_node = self.accelerators_known
        return None if per_node is None else self.nodes * max(per_node, 1)


# ---------------------------------------------------------------------------- storage


class StorageLocation(OneOf):
    """Durable storage: a path on a claim, or an object-store prefix."""

    one_of: ClassVar[tuple[str, ...]] = ("pvc", "s3")

    pvc: PvcLocation | None = None
    """A path on a PersistentVolumeClaim."""
    s3: S3Location | None = None
    """A prefix in S3-compatible object storage."""

    @property
    def shared(self) -> bool:
        """Whether pods on several nodes can all write here."""
        return self.s3 is not None or (self.pvc is not None and self.pvc.read_write_many)


class CheckpointSpec(ApiModel):
    """Checkpoints that let a failed or preempted attempt resume."""

    location: StorageLocation | None = None
    """Where checkpoints go. Default: beside the output on its claim or bucket (under
    checkpoints/); with an OCI or Hub destination, a volume that lasts only as long as the
    pod (no resume). Checkpoints bound for a bucket are written to the pod's scratch volume
    first and copied after each save, training waiting for the copy."""
    interval_steps: Annotated[int, Field(ge=1)] = 100
    """Write a checkpoint every this many optimizer steps (and on SIGTERM)."""
    keep: Annotated[int, Field(ge=1, le=100)] = 2
    """Newest complete checkpoints kept; older ones are removed."""


class HubDestination(HuggingFaceRepo):
    """A Hugging Face Hub repository to push to."""

    private: bool = True
    """Create the repository as private if it does not exist."""


class OutputSpec(OneOf):
    """Where the trained result goes and in which forms."""

    one_of: ClassVar[tuple[str, ...]] = ("pvc", "s3", "oci", "hugging_face")

    pvc: PvcLocation | None = None
    """A path on a PersistentVolumeClaim."""
    s3: S3Location | None = None
    """A prefix in S3-compatible object storage."""
    oci: OciReference | None = None
    """An OCI image (Kaito's adapter layout: data/adapter_config.json and weights)."""
    hugging_face: HubDestination | None = None
    """A repository on the Hugging Face Hub (needs tokenSecret)."""
    formats: Annotated[list[OutputFormat], Field(min_length=1, max_length=3)] | None = None
    """adapter (peft files), merged (the adapter merged into the base, safetensors) and/or onnx.
    Default: [adapter] for adapter methods, [merged] for full fine-tuning."""

    def formats_for(self, method: MethodType) -> list[OutputFormat]:
        """The output formats in force for a method (the default depends on it)."""
        if self.formats is not None:
            return self.formats
        return [OutputFormat.ADAPTER if method.uses_adapter else OutputFormat.MERGED]


# ---------------------------------------------------------------------------- spec


class FineTuneJobSpec(ApiModel):
    """A fine-tuning run: model, data, method, compute, and where the result goes."""

    task: TaskType = TaskType.CAUSAL_LM
    """What the model learns. causal-lm: to continue text (chat, instructions, completions,
    plain text). sequence-classification: one label per text (reports accuracy and macro-F1).
    token-classification: one tag per word, e.g. BIO entity tags (reports entity-level
    precision, recall and F1). seq2seq: an encoder-decoder model (T5, BART) writes a target
    from a source, e.g. translation or summarisation (reports BLEU). A classification head is
    new, so it trains in full beside the adapter and is saved with it."""
    objective: Objective = Objective.SFT
    """What the training optimises. sft: the likelihood of the answers. dpo and orpo: preference
    tuning, from pairs of a chosen and a rejected answer (dataset format preference), with any
    method; causal-lm only. dpo compares the model with a frozen reference (the base by
    default); orpo needs no reference and also learns the chosen answers."""
    preference: PreferenceSpec | None = None
    """Settings of dpo and orpo. Default: beta 0.1, the sigmoid loss, the base as reference."""
    model: ModelSpec
    """The base model."""
    dataset: DatasetSpec
    """The training data."""
    method: MethodSpec
    """The fine-tuning method: lora, qlora, dora or full, with its settings."""
    training: TrainingSpec = TrainingSpec()
    """The optimisation loop."""
    distributed: DistributedSpec = DistributedSpec()
    """How processes share the work."""
    resources: ResourcesSpec = ResourcesSpec()
    """Compute for the trainer pods. Default: one node with one nvidia.com/gpu."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Checkpoints for resuming."""
    output: OutputSpec
    """Where the result goes."""
    suspend: bool = False
    """Stop the pods (the last checkpoint is kept); false resumes. The only field that may
    change once the job has started."""
    queue_name: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    """Kueue LocalQueue that admits the job's pods."""
    max_retries: Annotated[int, Field(ge=0, le=100)] = 2
    """Failures retried: a training attempt (from the newest checkpoint) or the preflight,
    one budget for both. Preemption does not count."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """Limit on the whole job's running time, across attempts and suspensions."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """Remove the finished job's pods and Jobs this long after it ends (the FineTuneJob stays)."""

    @property
    def preferences(self) -> PreferenceSpec:
        """The preference settings in force (defaults when the block is omitted)."""
        return self.preference or PreferenceSpec()

    @property
    def matrix_strategy(self) -> Strategy | None:
        """The support-matrix row of the strategy in force; None while the size is not known."""
        strategy = self.distributed.strategy
        if strategy is StrategyType.DEEPSPEED:
            return Strategy(f"zero{(self.distributed.deepspeed or DeepSpeedSpec()).stage}")
        if strategy is StrategyType.FSDP:
            return Strategy.FSDP
        if strategy is StrategyType.DDP:
            return Strategy.DDP
        if strategy is StrategyType.NONE:
            return Strategy.SINGLE
        world = self.resources.world_size
        if world is None:
            return None
        return Strategy.SINGLE if world == 1 else Strategy.DDP

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FineTuneJobSpec:
        problems = spec_problems(self)
        if problems:
            raise PydanticCustomError(
                "spec_rules",
                "{summary}",
                {"summary": "; ".join(str(p) for p in problems), "problems": problems},
            )
        return self
