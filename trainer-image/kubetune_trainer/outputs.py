"""Write the trained result in the formats the spec asks for, into the local output folder.

Merging never happens inside a training engine or into 4-bit weights: the base is
reloaded in its compute dtype, the saved adapter is applied, then merged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api import OutputFormat, Precision
from kubetune.api.base import S3Location
from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.checkpoints import CheckpointMirror
from kubetune_trainer.hardware import DTYPES
from kubetune_trainer.model import ModelSource
from kubetune_trainer.mounts import open_to_readers
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.hub import HubRepo, hub_location
from kubetune_trainer.stores.oci import ImageName, Registry, adapter_image
from kubetune_trainer.stores.s3 import Bucket
from kubetune_trainer.tasks import task_for
from kubetune_trainer.tasks.labels import LabelMap


def check_formats(spec: FineTuneJobSpec) -> None:
    """Refuse, before training, a format this trainer cannot write."""
    if OutputFormat.ONNX in spec.output.formats_for(spec.method.type):
        from kubetune_trainer.onnx_export import require_causal_lm

        require_causal_lm(spec.task)


def write_outputs(
    trainer: Any,
    spec: FineTuneJobSpec,
    source: ModelSource,
    tokenizer: Any,
    precision: Precision,
    out: Path,
    scratch: Path,
    runtime: Runtime,
    barrier: Callable[[], None],
    task_settings: dict[str, Any] | None = None,
    labels: LabelMap | None = None,
) -> list[OutputFormat]:
    """Every rank takes part in saving (ZeRO-3 and FSDP gather the shards); rank 0 alone
    writes the tokenizer and the label names beside each output, and does the merge,
    outside the training engine, and the ONNX export of the merged model. `task_settings`
    rebuild the task's head for the merge."""
    formats = spec.output.formats_for(spec.method.type)
    # A merge needs the adapter on disk even when the adapter itself is not asked for, and
    # an ONNX export needs the merged model.
    adapter_dir = out / "adapter" if OutputFormat.ADAPTER in formats else scratch / "adapter-to-merge"
    merged_dir = out / "merged" if OutputFormat.MERGED in formats else scratch / "merged-for-onnx"
    merge = OutputFormat.MERGED in formats or OutputFormat.ONNX in formats
    if spec.method.type.uses_adapter:
        trainer.save_model(str(adapter_dir))
    elif merge:
        trainer.model.config.use_cache = True  # turned off for training; serving wants it
        trainer.save_model(str(merged_dir))
    failure: Exception | None = None
    if runtime.is_main:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        # The merge and the export load models outside the training engine: while a ZeRO-3
        # config is registered, from_pretrained shards what it loads, and rank 0 would wait
        # for the other ranks to gather it, forever.
        unset_hf_deepspeed_config()
        try:
            if spec.method.type.uses_adapter:
                tokenizer.save_pretrained(adapter_dir)
            if merge:
                if spec.method.type.uses_adapter:
                    _merge(spec, source, adapter_dir, merged_dir, precision, task_settings or {})
                tokenizer.save_pretrained(merged_dir)
            if OutputFormat.ONNX in formats:
                from kubetune_trainer.onnx_export import export_onnx

                export_onnx(merged_dir, out / "onnx")
            if labels is not None:
                for folder in (out, adapter_dir, merged_dir):
                    if folder is out or folder.is_dir():
                        labels.save(folder)
            open_to_readers(out)
        except Exception as error:  # the other ranks wait at the barrier: release them first
            failure = error
    barrier()
    if failure is not None:
        raise failure
    return formats


def _merge(
    spec: FineTuneJobSpec,
    source: ModelSource,
    adapter_dir: Path,
    merged_dir: Path,
    precision: Precision,
    task_settings: dict[str, Any],
) -> None:
    from peft import PeftModel

    # fp16 merges lose precision in the added deltas; bf16 and fp32 keep them.
    dtype = DTYPES[precision if precision is not Precision.FP16 else Precision.FP32]
    base = (
        task_for(spec.task)
        .model_class()
        .from_pretrained(
            source.location,
            revision=source.revision,
            token=source.token,
            trust_remote_code=source.trust_remote_code,
            dtype=dtype,
            **task_settings,
        )
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)


def output_folder(spec: FineTuneJobSpec, runtime: Runtime) -> Path:
    """The local folder outputs are written to (then published, for remote destinations)."""
    if runtime.output_override is not None:
        return runtime.output_override
    if spec.output.pvc is not None:
        return runtime.claim_path(spec.output.pvc.claim_name, spec.output.pvc.path)
    return runtime.work / "output"


def output_location(spec: FineTuneJobSpec, runtime: Runtime, folder: Path) -> str:
    """Where the result lives for the person reading status: a URI, or a local path."""
    output = spec.output
    if runtime.output_override is not None:
        return str(folder)
    if output.pvc is not None:
        return f"pvc://{output.pvc.claim_name}/{output.pvc.path.strip('/')}"
    if output.s3 is not None:
        return output.s3.uri
    if output.oci is not None:
        return f"oci://{ImageName.parse(output.oci.reference)}"
    assert output.hugging_face is not None, "exactly one destination is set (checked by the one-of rule)"
    return hub_location(output.hugging_face)


def check_destination(spec: FineTuneJobSpec, runtime: Runtime) -> None:
    """Refuse, before training, a remote destination whose credentials are not mounted or
    cannot be read, rather than find out with the result in hand."""
    output = spec.output
    if runtime.output_override is not None:
        return
    if output.oci is not None:
        Registry.open(output.oci, runtime)
    if output.hugging_face is not None:
        HubRepo.open(output.hugging_face, runtime)


def publish(spec: FineTuneJobSpec, runtime: Runtime, folder: Path) -> str:
    """Send a remote destination its copy (checkpoints stay behind) and return where the
    result lives: `output_location`, or for an image that pinned by the pushed digest.
    Rank 0 only. An image holds the adapter alone (the spec rules allow no other format)."""
    output = spec.output
    location = output_location(spec, runtime, folder)
    if runtime.output_override is not None:
        return location
    if output.s3 is not None:
        Bucket.open(output.s3, runtime).upload(folder, skip=("checkpoints",))
    elif output.oci is not None:
        image = adapter_image(folder / "adapter", spec.model.display, runtime.work / "oci-image")
        return f"{location}@{Registry.open(output.oci, runtime).push(image)}"
    elif output.hugging_face is not None:
        HubRepo.open(output.hugging_face, runtime).upload(
            folder, f"{runtime.job_name}: {spec.method.type} on {spec.model.display}", skip=("checkpoints",)
        )
    return location


def checkpoint_folder(spec: FineTuneJobSpec, runtime: Runtime, out: Path) -> Path:
    """The local folder the Trainer writes checkpoints into: the claim's path, else the pod's
    scratch (copied to object storage when `checkpoint_remote` names a place)."""
    location = spec.checkpoint.location
    if location is not None and location.pvc is not None:
        return runtime.claim_path(location.pvc.claim_name, location.pvc.path)
    if location is not None:
        return runtime.work / "checkpoints"
    return out / "checkpoints"


def checkpoint_remote(spec: FineTuneJobSpec, runtime: Runtime) -> S3Location | None:
    """Where checkpoints are copied in object storage: the checkpoint location's prefix, or by
    default `checkpoints/` under an S3 output (on the same bucket, with the same credentials).
    None for a claim, and by default for other destinations or an output redirected to a
    local folder (`kubetune run --output`)."""
    location = spec.checkpoint.location
    if location is not None:
        return location.s3
    output = spec.output.s3
    if output is None or runtime.output_override is not None:
        return None
    return output.model_copy(update={"uri": f"{output.uri.rstrip('/')}/checkpoints"})


def checkpoint_mirror(spec: FineTuneJobSpec, runtime: Runtime) -> CheckpointMirror | None:
    """The copy of the checkpoints in object storage, if any, for this process's part in it."""
    remote = checkpoint_remote(spec, runtime)
    if remote is None:
        return None
    return CheckpointMirror(
        Bucket.open(remote, runtime), spec.checkpoint.keep, uploads=runtime.local_rank == 0, is_main=runtime.is_main
    )
