"""Bad manifests get every problem listed, each by its field path.

Each case changes one thing in a valid manifest and names the path and a fragment of
the message a person must see. They go through the whole offline pipeline (CRD schema,
CEL rules, then the models' rules), as `kubetune validate` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubetune.api import InvalidSpec, parse_finetunejob
from kubetune.manifests import Document
from kubetune.validate import validate_document

Manifest = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    def change(job: Manifest) -> None:
        *parents, leaf = path.split(".")
        node = job
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return change


def _all(*changes: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def change(job: Manifest) -> None:
        for each in changes:
            each(job)

    return change


CASES: list[tuple[str, Callable[[Manifest], None], str, str]] = [
    ("misspelt field", _set("spec.methd", {"type": "lora"}), "spec.methd", "unknown field"),
    ("no model", lambda j: j["spec"].pop("model"), "spec.model", "required"),
    ("two model sources", _set("spec.model.pvc", {"claimName": "models"}), "spec.model", "exactly one of"),
    (
        "unknown method",
        _set("spec.method.type", "prefix-tuning"),
        "spec.method.type",
        "must be one of: lora, qlora, dora, full",
    ),
    ("rank zero", _set("spec.method.lora", {"r": 0}), "spec.method.lora.r", "must be at least 1"),
    (
        "lora block on full",
        _set("spec.method", {"type": "full", "lora": {"r": 8}}),
        "spec.method.lora",
        "takes no lora block",
    ),
    (
        "quantized lora",
        _set("spec.method.quantization", {"type": "nf4"}),
        "spec.method.quantization",
        "set method.type to qlora",
    ),
    (
        "qlora without accelerator",
        _all(_set("spec.method.type", "qlora"), _set("spec.resources.accelerators", 0)),
        "spec.resources.accelerators",
        "allowCpu",
    ),
    (
        "qlora on a device bitsandbytes lacks",
        _all(_set("spec.method.type", "qlora"), _set("spec.resources.acceleratorResource", "habana.ai/gaudi")),
        "spec.resources.acceleratorResource",
        "4-bit kernels do not run on habana.ai/gaudi",
    ),
    ("dataset without source", _set("spec.dataset", {"format": "chat"}), "spec.dataset", "exactly one of"),
    (
        "plain http url",
        _set("spec.dataset", {"urls": [{"url": "http://example.com/a.jsonl"}]}),
        "spec.dataset.urls[0].url",
        "https",
    ),
    (
        "deepspeed block under ddp",
        _set("spec.distributed", {"strategy": "ddp", "deepspeed": {"stage": 3}}),
        "spec.distributed.deepspeed",
        "strategy is ddp",
    ),
    (
        "parameter offload at stage 2",
        _set(
            "spec.distributed",
            {"strategy": "deepspeed", "deepspeed": {"stage": 2, "offloadParameters": True}},
        ),
        "spec.distributed.deepspeed.offloadParameters",
        "stage 3",
    ),
    (
        "ZeRO stage 4",
        _set("spec.distributed", {"strategy": "deepspeed", "deepspeed": {"stage": 4}}),
        "spec.distributed.deepspeed.stage",
        "must be one of: 1, 2, 3 (found 4)",
    ),
    (
        "multi-node output on a single-node claim",
        _set("spec.resources.nodes", 2),
        "spec.output.pvc.readWriteMany",
        "shared storage",
    ),
    (
        "adapter from full fine-tuning",
        _all(_set("spec.method.type", "full"), _set("spec.output.formats", ["adapter"])),
        "spec.output.formats",
        "no adapter to save",
    ),
    (
        "epochs and maxSteps",
        _set("spec.training", {"epochs": 2, "maxSteps": 100}),
        "spec.training.epochs",
        "not both",
    ),
    (
        "accelerator count as a word",
        _set("spec.resources.accelerators", "many"),
        "spec.resources.accelerators",
        "or auto",
    ),
    ("unknown preset", _set("spec.model.preset", "phi-4-giant"), "spec.model.preset", "known presets"),
    (
        "gated preset without a token",
        _set("spec.model.preset", "llama-3.1-8b-instruct"),
        "spec.model.hubTokenSecret",
        "gated",
    ),
    (
        "malformed bucket URI",
        _set("spec.output", {"s3": {"uri": "bucket/models"}}),
        "spec.output.s3.uri",
        "s3://",
    ),
    (
        "one process on four devices",
        _all(_set("spec.distributed.strategy", "none"), _set("spec.resources.accelerators", 4)),
        "spec.distributed.strategy",
        "ask for 4",
    ),
    (
        "evaluation with two sources",
        _set(
            "spec.dataset.evaluation",
            {"fraction": 0.1, "source": {"configMap": {"name": "e", "key": "e.jsonl"}}},
        ),
        "spec.dataset.evaluation",
        "exactly one of",
    ),
    (
        "negative learning rate",
        _set("spec.training", {"learningRate": -0.001}),
        "spec.training.learningRate",
        "must be greater than 0",
    ),
    (
        "memory that is not a quantity",
        _set("spec.resources.memory", "lots"),
        "spec.resources.memory",
        "pattern",
    ),
    ("wrong apiVersion", _set("apiVersion", "kubetune.io/v1"), "apiVersion", "kubetune.io/v1alpha1"),
    (
        "paged optimizer on CPU",
        _all(_set("spec.training.optimizer", "paged-adamw-8bit"), _set("spec.resources.accelerators", 0)),
        "spec.training.optimizer",
        "needs an accelerator",
    ),
    (
        "Hub destination without a token",
        _set("spec.output", {"huggingFace": {"repo": "org/model"}}),
        "spec.output.huggingFace.tokenSecret",
        "write access",
    ),
    (
        "OCI output of a full fine-tune",
        _all(
            _set("spec.method", {"type": "full"}),
            _set("spec.output", {"oci": {"reference": "registry.example.com/adapters/demo:v1"}}),
        ),
        "spec.output.oci",
        "full fine-tuning makes no adapter",
    ),
    (
        "OCI output of a merged model",
        _set("spec.output", {"oci": {"reference": "registry.example.com/adapters/demo:v1"}, "formats": ["merged"]}),
        "spec.output.formats",
        "holds the adapter alone; set formats to [adapter]",
    ),
    (
        "OCI output pinned by digest",
        _set("spec.output", {"oci": {"reference": "registry.example.com/adapters/demo@sha256:" + "0" * 64}}),
        "spec.output.oci.reference",
        "name a tag to push to",
    ),
    (
        "environment variable without a name",
        _set("spec.resources.env", [{"value": "1"}]),
        "spec.resources.env[0].name",
        "needs a name",
    ),
    (
        "sequence longer than the model's context",
        _set("spec.dataset.maxSeqLength", 8192),
        "spec.dataset.maxSeqLength",
        "context length",
    ),
    (
        "trust remote code not granted",
        _set("spec.model.preset", "phi-3-small-8k-instruct"),
        "spec.model.trustRemoteCode",
        "runs modelling code",
    ),
    (
        "FSDP without accelerators",
        _all(_set("spec.distributed.strategy", "fsdp"), _set("spec.resources.accelerators", 0)),
        "spec.distributed.strategy",
        "runs only on accelerators",
    ),
    (
        "wandb without credentials",
        _set("spec.training.tracking", {"backend": "wandb"}),
        "spec.training.tracking.credentialsSecret",
        "WANDB_API_KEY",
    ),
    ("unknown task", _set("spec.task", "image-classification"), "spec.task", "sequence-classification"),
    (
        "chat data for a classifier",
        _set("spec.task", "sequence-classification"),
        "spec.dataset.format",
        "task sequence-classification reads text-label; instruction is for causal-lm",
    ),
    (
        "classification data for a language model",
        _set("spec.dataset.format", "tokens-tags"),
        "spec.dataset.format",
        "tokens-tags is for token-classification",
    ),
    (
        "labels for a generation task",
        _set("spec.dataset.labels", ["yes", "no"]),
        "spec.dataset.labels",
        "causal-lm has none",
    ),
    (
        "a label named twice",
        _all(
            _set("spec.task", "sequence-classification"),
            _set("spec.dataset.format", "text-label"),
            _set("spec.dataset.labels", ["yes", "no", "yes"]),
        ),
        "spec.dataset.labels",
        "twice",
    ),
    (
        "packed classification examples",
        _all(
            _set("spec.task", "sequence-classification"),
            _set("spec.dataset.format", "auto"),
            _set("spec.dataset.packing", True),
        ),
        "spec.dataset.packing",
        "one example per sequence",
    ),
    (
        "a task on a strategy the task rows refuse",
        _all(
            _set("spec.task", "sequence-classification"),
            _set("spec.dataset.format", "text-label"),
            _set("spec.resources.accelerators", 2),
            _set("spec.distributed.strategy", "fsdp"),
        ),
        "spec.distributed.strategy",
        "sequence-classification x fsdp is not supported: FSDP has not been checked with this task on GPUs yet",
    ),
    (
        "auto-sized model from the Hub without a preflight",
        _all(
            _set("spec.model", {"huggingFace": {"repo": "microsoft/Phi-3-mini-128k-instruct"}}),
            _set("spec.resources", {"accelerators": "auto"}),
            _set("spec.dataset.preflight", False),
        ),
        "spec.dataset.preflight",
        "resources.accelerators: auto sizes microsoft/Phi-3-mini-128k-instruct from its config.json",
    ),
    (
        "seq2seq on a decoder-only preset",
        _all(_set("spec.task", "seq2seq"), _set("spec.dataset.format", "source-target")),
        "spec.task",
        "encoder-decoder",
    ),
]


@pytest.mark.parametrize(("change", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_reported_at_its_field_path(
    job: Manifest, change: Callable[[Manifest], None], path: str, fragment: str
) -> None:
    change(job)

    verdict = validate_document(Document(job, "job.yaml", 0))

    assert not verdict.ok
    messages = {str(p) for p in verdict.problems}
    assert any(p.path == path and fragment in p.message for p in verdict.problems), messages


def test_every_problem_is_listed_in_one_message(job: Manifest) -> None:
    job["spec"]["method"] = {"type": "full", "lora": {"r": 8}}
    job["spec"]["resources"] = {"nodes": 2}
    job["spec"]["training"] = {"epochs": 1, "maxSteps": 10}

    with pytest.raises(InvalidSpec) as caught:
        parse_finetunejob(job, source="job.yaml")

    paths = [p.path for p in caught.value.problems]
    assert paths == ["spec.method.lora", "spec.output.pvc.readWriteMany", "spec.training.epochs"]
    assert str(caught.value).startswith("job.yaml: 3 problems in the FineTuneJob:\n  - spec.method.lora: ")


def test_a_manifest_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="expected a FineTuneJob object, found list"):
        parse_finetunejob(["not", "a", "job"])
