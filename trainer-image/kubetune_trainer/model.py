"""The base model and tokenizer, loaded from the spec's source, and the method applied to it.

The task decides the model class (and so its head); `apply_method` is the one place the
method is dispatched. A head the checkpoint lacks is new: it trains in full beside an
adapter and is saved with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune.api import MethodType, Precision
from kubetune.api.spec import FineTuneJobSpec, LoraSpec, QuantizationSpec
from kubetune.catalog import Preset, presets
from kubetune_trainer.disk import disk_full
from kubetune_trainer.engine import full_elements
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.hardware import DTYPES
from kubetune_trainer.mounts import readable
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import secret_value
from kubetune_trainer.tasks import task_for

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained finds the model: a repository id or a local folder."""

    location: str
    revision: str | None
    token: str | None
    trust_remote_code: bool
    preset: Preset | None
    label: str | None = None
    """What to call the model in reports (a downloaded model keeps its repository id)."""

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.location if self.revision in (None, "main") else f"{self.location}@{self.revision}"


def resolve_source(spec: FineTuneJobSpec, runtime: Runtime) -> ModelSource:
    model = spec.model
    token = None
    if model.hub_token_secret is not None:
        token = secret_value(runtime, model.hub_token_secret.name, model.hub_token_secret.key)
    if model.preset is not None:
        preset = presets()[model.preset]
        return ModelSource(preset.repo, "main", token, model.trust_remote_code, preset)
    if model.hugging_face is not None:
        repo = model.hugging_face
        return ModelSource(repo.repo, repo.revision, token, model.trust_remote_code, None)
    assert model.pvc is not None
    folder = readable(runtime.claim_path(model.pvc.claim_name, model.pvc.path), f"model {model.display}")
    if not (folder / "config.json").is_file():
        raise InvalidSpec(f"no model at {model.pvc.claim_name}:{model.pvc.path} (no config.json in {folder})")
    refuse_pickled_weights(folder, f"model {model.pvc.claim_name}:{model.pvc.path}")
    return ModelSource(str(folder), None, None, model.trust_remote_code, None)


SAFE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled_weights(folder: Path, what: str) -> None:
    """Weights are read from safetensors only: a pickle can carry code that runs as it loads."""
    if any(next(folder.glob(pattern), None) for pattern in SAFE_WEIGHTS):
        return
    pickles = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern))
    found = f" (it holds {', '.join(pickles)})" if pickles else ""
    raise InvalidSpec(
        f"{what} has no safetensors weights{found}; pickle checkpoints are refused because loading them "
        "can run code: convert the weights to safetensors (save_pretrained writes them by default)"
    )


# Files a training run never reads (pickled weights are refused); leaving them out saves
# much of a large repository.
SKIPPED_FILES = ["original/*", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot", "*.pth", "pytorch_model*.bin"]


def fetch_once(source: ModelSource, runtime: Runtime, timeout: float = 3600.0, pause: float = 2.0) -> ModelSource:
    """A Hub model downloads once per pod, whose ranks share the pod's cache: local rank 0
    fetches it, the others wait for its word, and every rank then loads from the folder."""
    if Path(source.location).is_dir():
        return source
    # The markers stay in the pod (another pod's old failure must not stop this one); the
    # files go to the installation's shared cache when there is one.
    markers = runtime.work / "hf-cache"
    cache = runtime.model_cache or markers
    key = hashlib.sha256(f"{source.location}@{source.revision}".encode()).hexdigest()[:16]

    def download() -> str:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(
                source.location,
                revision=source.revision,
                token=source.token,
                cache_dir=str(cache),
                ignore_patterns=SKIPPED_FILES,
            )
        except Exception as error:  # the Hub client raises many types; the message is what matters
            raise disk_full(error, [cache]) or InvalidSpec(f"cannot download model {source.display}: {error}") from None

    folder = once_per_node(markers, key, download, f"model {source.display}", runtime, timeout, pause)
    return dataclasses.replace(source, location=folder, revision=None, label=source.display)


def fetch_config(source: ModelSource, runtime: Runtime) -> dict[str, Any]:
    """The model's config.json alone, without its weights: a folder's own, or the Hub's file,
    fetched into the cache the weights will later join."""
    if Path(source.location).is_dir():
        config = Path(source.location) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        cache = runtime.model_cache or runtime.work / "hf-cache"
        try:
            config = Path(
                hf_hub_download(
                    source.location, "config.json", revision=source.revision, token=source.token, cache_dir=str(cache)
                )
            )
        except Exception as error:  # the Hub client raises many types; the message is what matters
            raise disk_full(error, [cache]) or InvalidSpec(
                f"cannot download the config.json of model {source.display}: {error}"
            ) from None
    try:
        body = json.loads(config.read_text())
    except (OSError, ValueError) as error:
        raise InvalidSpec(f"cannot read the config.json of model {source.display}: {error}") from None
    if not isinstance(body, dict):
        raise InvalidSpec(f"the config.json of model {source.display} is not a JSON object")
    return body


def once_per_node(
    markers: Path,
    key: str,
    fetch: Callable[[], str],
    what: str,
    runtime: Runtime,
    timeout: float = 3600.0,
    pause: float = 2.0,
) -> str:
    """Run `fetch` once per pod: local rank 0 runs it and leaves its result (a path) in a
    marker under `markers`, or its failure; the other ranks wait for the marker and return
    the same result, or stop with the same reason."""
    markers.mkdir(parents=True, exist_ok=True)
    ready, failed = markers / f".ready-{key}", markers / f".failed-{key}"
    if runtime.local_rank == 0:
        try:
            result = fetch()
        except Exception as error:  # whatever stops rank 0 must stop the ranks waiting for it
            write_marker(failed, str(error))
            raise
        write_marker(ready, result)
        return result
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if failed.exists():
            raise InvalidSpec(failed.read_text())
        if time.monotonic() > deadline:
            raise InvalidSpec(f"{what} was not fetched by local rank 0 within {timeout:.0f} s")
        time.sleep(pause)
    return ready.read_text()


def write_marker(marker: Path, text: str) -> None:
    """Another rank polls for the marker, so it appears whole or not at all."""
    aside = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    aside.write_text(text)
    aside.replace(marker)


def load_tokenizer(source: ModelSource, runtime: Runtime) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location,
            revision=source.revision,
            token=source.token,
            trust_remote_code=source.trust_remote_code,
            cache_dir=_cache(runtime),
        )
    except (OSError, ValueError) as error:  # ValueError: among others, code the spec does not trust
        raise InvalidSpec(f"cannot load the tokenizer of model {source.display}: {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quant: QuantizationSpec, storage: torch.dtype, keep: tuple[str, ...] = ()) -> Any:
    """4-bit settings; the modules named in `keep` (a task's new head) stay in full precision,
    since they train in full."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        llm_int8_skip_modules=list(keep) or None,
        bnb_4bit_quant_type=quant.type.value,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[Precision(quant.compute_dtype.value)],
        # Sharding strategies (ZeRO-3, FSDP) need the packed 4-bit weights stored in the
        # same dtype as the rest of the model.
        bnb_4bit_quant_storage=storage,
    )


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    new_modules: tuple[str, ...] = ()
    """Modules whose weights the checkpoint lacks (a classification head): they start random."""


def load_model(
    spec: FineTuneJobSpec,
    source: ModelSource,
    precision: Precision,
    runtime: Runtime,
    task_settings: dict[str, Any] | None = None,
    frozen: bool = False,
) -> LoadedModel:
    """The base model with the task's head, in the dtype the method needs: adapters train over
    a base in the compute dtype; full fine-tuning keeps fp32 master weights under mixed
    precision, which a `frozen` model (a reference) needs not. `task_settings` go to the
    model's config (a classifier's labels)."""
    task = task_for(spec.task)
    compute = DTYPES[precision]
    dtype = torch.float32 if spec.method.type is MethodType.FULL and not frozen else compute
    quant = spec.method.quantized
    kwargs: dict[str, Any] = dict(task_settings or {})
    if quant is not None:
        kwargs["quantization_config"] = quantization_config(quant, storage=compute, keep=task.head_names)
    if Path(source.location).is_dir():
        refuse_pickled_weights(Path(source.location), f"model {source.display}")
    try:
        model, info = task.model_class().from_pretrained(
            source.location,
            revision=source.revision,
            token=source.token,
            trust_remote_code=source.trust_remote_code,
            use_safetensors=True,
            dtype=dtype,
            attn_implementation="sdpa",
            cache_dir=_cache(runtime),
            output_loading_info=True,
            **kwargs,
        )
    except OSError as error:
        raise InvalidSpec(f"cannot load model {source.display}: {error}") from None
    except ValueError as error:  # transformers' word for a model without the task's head class
        raise InvalidSpec(f"cannot load model {source.display} for {spec.task}: {error}") from None
    # No key/value cache in training: it costs memory, and its presence stops transformers
    # from isolating the examples of a packed sequence from each other.
    model.config.use_cache = False
    if quant is not None:
        keep_4bit_weights_differentiable(model)
    return LoadedModel(model, new_modules(model, info["missing_keys"]))


def keep_4bit_weights_differentiable(model: Any) -> None:
    """On a CPU, bitsandbytes repacks a 4-bit layer's weights into an inference layout the
    first time the layer runs in evaluation mode without gradients (the evaluation before
    training does), and that layout's kernel has no backward: every layer below would then
    train on wrong gradients. A model that trains keeps the layout it can differentiate."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def new_modules(model: Any, missing_keys: Iterable[str]) -> tuple[str, ...]:
    """The smallest modules that hold every missing weight, by name ("classifier")."""
    names = {name for name, _ in model.named_modules() if name}
    found = set()
    for key in missing_keys:
        owner = key.rsplit(".", 1)[0]
        if owner in names:
            found.add(owner)
    return tuple(sorted(found))


def target_modules(lora: LoraSpec, preset: Preset | None) -> list[str] | str:
    if lora.target_modules == [ALL_LINEAR]:
        return ALL_LINEAR
    if lora.target_modules:
        return list(lora.target_modules)
    return list(preset.target_modules) if preset else ALL_LINEAR


def apply_method(
    loaded: LoadedModel, spec: FineTuneJobSpec, source: ModelSource, adapter_from: Path | None = None
) -> Any:
    """Make the model trainable as the method says: every weight, or adapters over a frozen
    (possibly 4-bit) base with any new head trained in full. The only dispatch on the method."""
    method = spec.method
    model = loaded.model
    match method.type:
        case MethodType.FULL:
            model.requires_grad_(True)
            if spec.training.gradient_checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return model
        case MethodType.LORA | MethodType.DORA | MethodType.QLORA:
            return _with_adapter(model, spec, source, adapter_from, loaded.new_modules)
    raise AssertionError(f"unhandled method {method.type}")


def _with_adapter(
    model: Any, spec: FineTuneJobSpec, source: ModelSource, adapter_from: Path | None, heads: tuple[str, ...]
) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    checkpointing = spec.training.gradient_checkpointing
    if spec.method.quantized is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if adapter_from is not None:
        refuse_pickled_weights(adapter_from, f"the warm-start adapter at {adapter_from}")
        return _trained_in_fp32(PeftModel.from_pretrained(model, str(adapter_from), is_trainable=True))
    lora = spec.method.adapter
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_modules(lora, source.preset),
        # A new head has nothing to adapt: it trains in full, and the adapter carries it.
        exclude_modules=list(heads) or None,
        modules_to_save=list(dict.fromkeys([*lora.modules_to_save, *heads])) or None,
        use_dora=spec.method.type is MethodType.DORA,
        use_rslora=lora.use_rslora,
        task_type=task_for(spec.task).peft_task_type,
    )
    return _trained_in_fp32(get_peft_model(model, config))


def _trained_in_fp32(model: Any) -> Any:
    """Modules trained in full beside the adapters (a new head) keep fp32 weights, as peft
    keeps the adapters' (ZeRO-3 takes a single dtype for every trained weight), and, as the
    adapters do, cast what comes in to their own dtype: DeepSpeed feeds them 16-bit states
    without autocast."""
    from peft.utils import ModulesToSaveWrapper

    for wrapper in model.modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        for copy in wrapper.modules_to_save.values():
            for parameter in copy.parameters():
                parameter.data = parameter.data.float()
            copy.register_forward_pre_hook(_inputs_to_fp32)
    return model


def _inputs_to_fp32(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def trainable_parameters(model: Any) -> tuple[int, int]:
    trainable = sum(full_elements(p) for p in model.parameters() if p.requires_grad)
    total = sum(full_elements(p) for p in model.parameters())
    return trainable, total


def _cache(runtime: Runtime) -> str:
    return str(runtime.work / "hf-cache")
