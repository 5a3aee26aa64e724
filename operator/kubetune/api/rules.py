"""Cross-field rules of the FineTuneJob spec: what the schema of each field cannot say alone.

Each rule is a small function that yields located problems; `spec_problems` runs them
all so a manifest gets every problem in one answer. Paths are relative to `spec`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kubetune.api.enums import (
    TASK_FORMATS,
    DataFormat,
    MethodType,
    Objective,
    OutputFormat,
    StrategyType,
    TaskType,
    TrackingBackend,
)
from kubetune.api.problems import Problem
from kubetune.api.tasks import objective_row, task_row
from kubetune.catalog import presets, support_row

if TYPE_CHECKING:
    from kubetune.api.spec import FineTuneJobSpec

Rule = Callable[["FineTuneJobSpec"], Iterator[Problem]]

# Device plugins whose devices bitsandbytes' 4-bit kernels run on.
QUANTIZATION_CAPABLE_RESOURCES = ("nvidia.com/", "amd.com/gpu", "gpu.intel.com/")


def _model(spec: FineTuneJobSpec) -> Iterator[Problem]:
    model = spec.model
    if model.preset is None:
        if model.hub_token_secret is not None and model.pvc is not None:
            yield Problem("model.hubTokenSecret", "a model on a volume needs no Hub token; remove it")
        return
    preset = presets().get(model.preset)
    if preset is None:
        yield Problem("model.preset", f"unknown preset {model.preset!r}; known presets: {', '.join(presets())}")
        return
    if preset.trust_remote_code and not model.trust_remote_code:
        yield Problem(
            "model.trustRemoteCode",
            f"preset {model.preset} runs modelling code from its repository; set it to true to allow that",
        )
    if preset.gated and model.hub_token_secret is None:
        yield Problem(
            "model.hubTokenSecret",
            f"preset {model.preset} is a gated model on the Hub; name a "
            "Secret key holding a token of an account that accepted its licence",
        )
    if spec.dataset.max_seq_length > preset.context_length:
        yield Problem(
            "dataset.maxSeqLength",
            f"{spec.dataset.max_seq_length} exceeds the context length of {model.preset} ({preset.context_length})",
        )


def _method(spec: FineTuneJobSpec) -> Iterator[Problem]:
    method = spec.method
    if method.type is MethodType.FULL:
        if method.lora is not None:
            yield Problem("method.lora", "full fine-tuning trains every weight and takes no lora block")
        if method.quantization is not None:
            yield Problem("method.quantization", "full fine-tuning cannot train a 4-bit base; use qlora")
        if spec.training.warm_start is not None:
            yield Problem(
                "training.warmStart",
                "a warm start loads an adapter; full fine-tuning has none "
                "(point model at the earlier full model instead)",
            )
    elif method.type is MethodType.LORA and method.quantization is not None:
        yield Problem(
            "method.quantization",
            "a 4-bit base is method qlora (or dora, for QDoRA); set method.type to qlora",
        )


def _quantization(spec: FineTuneJobSpec) -> Iterator[Problem]:
    quant = spec.method.quantized
    if quant is None:
        return
    resources = spec.resources
    if resources.accelerators == 0 and not quant.allow_cpu:
        yield Problem(
            "resources.accelerators",
            "4-bit training needs an accelerator; give one, or set "
            "method.quantization.allowCpu: true to train on CPU (slow)",
        )
    if resources.accelerators != 0 and not resources.accelerator_resource.startswith(QUANTIZATION_CAPABLE_RESOURCES):
        yield Problem(
            "resources.acceleratorResource",
            f"bitsandbytes 4-bit kernels do not run on "
            f"{resources.accelerator_resource}; use lora or dora, or NVIDIA, AMD or Intel GPUs",
        )
    deepspeed = spec.distributed.deepspeed
    if deepspeed is not None and deepspeed.offload_parameters:
        yield Problem(
            "distributed.deepspeed.offloadParameters",
            "DeepSpeed cannot offload 4-bit quantised parameters to CPU; turn it off",
        )


def _distributed(spec: FineTuneJobSpec) -> Iterator[Problem]:
    distributed = spec.distributed
    strategy = distributed.strategy
    if distributed.deepspeed is not None and strategy is not StrategyType.DEEPSPEED:
        yield Problem("distributed.deepspeed", f"settings for deepspeed, but the strategy is {strategy}")
    if distributed.fsdp is not None and strategy is not StrategyType.FSDP:
        yield Problem("distributed.fsdp", f"settings for fsdp, but the strategy is {strategy}")
    if (
        distributed.deepspeed is not None
        and distributed.deepspeed.offload_parameters
        and distributed.deepspeed.stage != 3
    ):
        yield Problem("distributed.deepspeed.offloadParameters", "parameter offload needs ZeRO stage 3")
    world = spec.resources.world_size
    if strategy is StrategyType.NONE and world is not None and world > 1:
        yield Problem(
            "distributed.strategy",
            f"strategy none runs one process, but resources ask for {world}; choose ddp, deepspeed or fsdp",
        )


def _support_matrix(spec: FineTuneJobSpec) -> Iterator[Problem]:
    strategy = spec.matrix_strategy
    if strategy is None:
        return
    for fmt in spec.output.formats_for(spec.method.type):
        row = support_row(spec.method.type, strategy, fmt)
        if not row.supported:
            yield Problem("output.formats", f"{spec.method.type} x {strategy} x {fmt} is not supported: {row.reason}")
        elif row.needs_accelerator and spec.resources.accelerators == 0:
            yield Problem(
                "distributed.strategy",
                f"{strategy} runs only on accelerators (accelerate has no CPU FSDP); on CPU-only jobs use "
                "deepspeed, whose ZeRO-3 shards the same way, or ddp",
            )
    formats = spec.output.formats or []
    if len(set(formats)) != len(formats):
        yield Problem("output.formats", "lists a format twice")


def _storage(spec: FineTuneJobSpec) -> Iterator[Problem]:
    if spec.resources.nodes == 1:
        return
    shared_hint = "jobs on several nodes need shared storage: S3, or a claim with readWriteMany: true"
    if spec.output.pvc is not None and not spec.output.pvc.read_write_many:
        yield Problem("output.pvc.readWriteMany", shared_hint)
    location = spec.checkpoint.location
    if location is not None and not location.shared:
        yield Problem("checkpoint.location", shared_hint)
    if location is None and spec.output.pvc is None and spec.output.s3 is None:
        yield Problem(
            "checkpoint.location",
            f"{shared_hint}; the output is not on such storage, so name a checkpoint location",
        )


def _training(spec: FineTuneJobSpec) -> Iterator[Problem]:
    training = spec.training
    if training.max_steps is not None and "epochs" in training.model_fields_set:
        yield Problem("training.epochs", "set epochs or maxSteps, not both")
    if training.warmup_steps is not None and training.warmup_ratio is not None:
        yield Problem("training.warmupSteps", "set warmupRatio or warmupSteps, not both")
    if training.optimizer.paged and spec.resources.accelerators == 0:
        yield Problem(
            "training.optimizer",
            f"{training.optimizer} pages optimizer states through CUDA "
            "memory and needs an accelerator; use adamw or adamw-8bit on CPU",
        )
    tracking = training.tracking
    if tracking is not None:
        if tracking.backend is TrackingBackend.MLFLOW and tracking.uri is None:
            yield Problem("training.tracking.uri", "MLflow needs the tracking server's URL")
        if tracking.backend is TrackingBackend.WANDB and tracking.credentials_secret is None:
            yield Problem("training.tracking.credentialsSecret", "Weights & Biases needs a Secret with WANDB_API_KEY")


def _dataset(spec: FineTuneJobSpec) -> Iterator[Problem]:
    evaluation = spec.dataset.evaluation
    if evaluation is not None and (evaluation.fraction is None) == (evaluation.source is None):
        yield Problem("dataset.evaluation", "set exactly one of: fraction, source")
    if not spec.dataset.preflight and spec.resources.accelerators == "auto" and spec.model.preset is None:
        yield Problem(
            "dataset.preflight",
            f"resources.accelerators: auto sizes {spec.model.display} from its config.json, which the preflight "
            "reads: keep the preflight, or set resources.accelerators",
        )


def _task(spec: FineTuneJobSpec) -> Iterator[Problem]:
    task, dataset = spec.task, spec.dataset
    # Preference pairs are the objective's format, checked with it (`_objective`).
    preference = spec.objective.prefers or dataset.format is DataFormat.PREFERENCE
    if not preference and dataset.format is not DataFormat.AUTO and dataset.format not in task.formats:
        readers = ", ".join(t.value for t, formats in TASK_FORMATS.items() if dataset.format in formats)
        yield Problem(
            "dataset.format",
            f"task {task} reads {', '.join(f.value for f in task.formats)}; {dataset.format} is for {readers}",
        )
    if dataset.labels is not None:
        if not task.has_labels:
            yield Problem("dataset.labels", f"labels name the classes of a classification task; {task} has none")
        elif len(set(dataset.labels)) != len(dataset.labels):
            yield Problem("dataset.labels", "lists a label twice")
    if task is TaskType.CAUSAL_LM:
        return
    if dataset.packing:
        yield Problem("dataset.packing", f"packing joins examples of causal-lm; {task} takes one example per sequence")
    preset = presets().get(spec.model.preset) if spec.model.preset else None
    if task is TaskType.SEQ2SEQ and preset is not None and preset.architecture.endswith("ForCausalLM"):
        yield Problem(
            "task",
            f"seq2seq needs an encoder-decoder model (T5, BART, ...); preset {spec.model.preset} is decoder-only "
            "(use causal-lm with prompt-completion data instead)",
        )
    strategy = spec.matrix_strategy
    row = task_row(task, strategy) if strategy is not None else None
    if strategy is not None and (row is None or not row.supported):
        reason = row.reason if row is not None and row.reason else "not in the support matrix"
        yield Problem("distributed.strategy", f"{task} x {strategy} is not supported: {reason}")


def _objective(spec: FineTuneJobSpec) -> Iterator[Problem]:
    objective, preference, dataset = spec.objective, spec.preference, spec.dataset
    if not objective.prefers:
        if preference is not None:
            yield Problem("preference", f"settings of dpo and orpo, but the objective is {objective}")
        if dataset.format is DataFormat.PREFERENCE:
            yield Problem("dataset.format", "preference pairs train objective dpo or orpo; set objective")
        return
    # A preference is between two continuations of a prompt by one decoder; the other tasks
    # predict labels or write through an encoder, where a chosen and a rejected answer mean nothing.
    if spec.task is not TaskType.CAUSAL_LM:
        yield Problem("objective", f"{objective} tunes a causal language model's answers; task {spec.task} has none")
    if dataset.format not in (DataFormat.AUTO, DataFormat.PREFERENCE):
        yield Problem("dataset.format", f"{objective} reads preference pairs (format preference), not {dataset.format}")
    if dataset.packing:
        yield Problem("dataset.packing", f"{objective} lays each pair's answers out together; packing is for sft")
    if "completion_only_loss" in dataset.model_fields_set and not dataset.completion_only_loss:
        yield Problem("dataset.completionOnlyLoss", f"{objective} scores the answers alone; remove the field")
    if preference is not None and objective is Objective.ORPO:
        if preference.loss_type is not None:
            yield Problem("preference.lossType", "orpo has one loss, the odds ratio; the loss types are dpo's")
        if preference.reference is not None:
            yield Problem("preference.reference", "orpo compares no reference model; remove it or use dpo")
    yield from _objective_row(spec)


def _objective_row(spec: FineTuneJobSpec) -> Iterator[Problem]:
    strategy = spec.matrix_strategy
    if strategy is None:
        return
    row = objective_row(spec.objective, spec.method.type, strategy)
    if row is None or not row.supported:
        reason = row.reason if row is not None and row.reason else "not in the support matrix"
        yield Problem(
            "distributed.strategy", f"{spec.objective} x {spec.method.type} x {strategy} is not supported: {reason}"
        )


def _output(spec: FineTuneJobSpec) -> Iterator[Problem]:
    hub = spec.output.hugging_face
    if hub is not None and hub.token_secret is None:
        yield Problem("output.huggingFace.tokenSecret", "pushing to the Hub needs a token with write access")
    oci = spec.output.oci
    if oci is None:
        return
    if "@" in oci.reference:
        yield Problem(
            "output.oci.reference",
            "name a tag to push to (registry/repository:tag); an image's digest is known only after the push",
        )
    # Kaito's adapter image holds data/adapter_config.json and the adapter's weights, nothing else.
    if not spec.method.type.uses_adapter:
        yield Problem(
            "output.oci",
            "an OCI output is an adapter image in Kaito's layout, and full fine-tuning makes no adapter; "
            "use pvc, s3 or huggingFace",
        )
    elif spec.output.formats_for(spec.method.type) != [OutputFormat.ADAPTER]:
        yield Problem(
            "output.formats",
            "an OCI output is an adapter image in Kaito's layout and holds the adapter alone; "
            "set formats to [adapter], or use pvc, s3 or huggingFace for merged or onnx",
        )


def _resources(spec: FineTuneJobSpec) -> Iterator[Problem]:
    for index, env in enumerate(spec.resources.env):
        if not isinstance(env.get("name"), str) or not env["name"]:
            yield Problem(f"resources.env[{index}].name", "an environment variable needs a name")
    for index, mount in enumerate(spec.resources.volume_mounts):
        for key in ("name", "mountPath"):
            if not isinstance(mount.get(key), str) or not mount[key]:
                yield Problem(f"resources.volumeMounts[{index}].{key}", "required field is missing")


RULES: tuple[Rule, ...] = (
    _model,
    _method,
    _quantization,
    _distributed,
    _support_matrix,
    _storage,
    _training,
    _dataset,
    _task,
    _objective,
    _output,
    _resources,
)


def spec_problems(spec: FineTuneJobSpec) -> list[Problem]:
    """Every cross-field problem of a spec whose fields are each valid on their own."""
    return sorted({problem for rule in RULES for problem in rule(spec)})
