"""The adapter a warm start continues from, in a local folder that peft loads.

An adapter on a volume is read where it lies. One in object storage, on the Hugging Face
Hub or in an OCI registry (Kaito's adapter image) is fetched into the pod's work folder by
local rank 0 while the other ranks of the pod wait for it (`model.once_per_node`).

Only what a warm start reads is fetched: adapter_config.json and adapter_model.safetensors
(never pickled weights), with the tokenizer files saved beside them. The adapter may lie at
the top of the source or in its adapter/ folder, as in kubetune's own outputs, so the
location a finished job reports can be named as it is (a merged model beside the adapter is
not fetched). Whatever the source, the folder must hold both adapter files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from kubetune.api.base import HuggingFaceRepo, S3Location
from kubetune.api.spec import AdapterSource, FineTuneJobSpec, ModelSpec
from kubetune.catalog import presets
from kubetune_trainer.disk import disk_full
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.model import PICKLED_WEIGHTS, once_per_node
from kubetune_trainer.mounts import readable
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.hub import hub_endpoint
from kubetune_trainer.stores.oci import ADAPTER_FILES, Registry
from kubetune_trainer.stores.s3 import Bucket
from kubetune_trainer.stores.secrets import redact, secret_value

log = logging.getLogger(__name__)

WORK_FOLDER = "warm-start"
OUTPUT_ADAPTER_FOLDER = "adapter"
"""Where a kubetune output keeps its adapter."""
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
FETCHED_FILES = (*ADAPTER_FILES, *TOKENIZER_FILES)
# Whole names, no wildcards: a pattern's * crosses folders and would take a merged model's
# shards, or pickled weights.
HUB_PATTERNS = [*FETCHED_FILES, *(f"{OUTPUT_ADAPTER_FOLDER}/{name}" for name in FETCHED_FILES)]
HUB_CACHE_FOLDER = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def warm_start_folder(spec: FineTuneJobSpec, runtime: Runtime) -> Path | None:
    """The folder of the adapter the spec warm-starts from, fetched and checked; None
    without a warm start. Raises InvalidSpec naming the source when it holds no adapter."""
    warm = spec.training.warm_start
    if warm is None:
        return None
    key = hashlib.sha256(warm.model_dump_json().encode()).hexdigest()[:16]
    markers = runtime.work / WORK_FOLDER
    folder = once_per_node(
        markers, key, lambda: str(_fetch(warm, spec, runtime, markers)), f"the adapter at {describe(warm)}", runtime
    )
    return Path(folder)


def describe(warm: AdapterSource) -> str:
    """The source in a few words, for messages."""
    if warm.pvc is not None:
        return f"{warm.pvc.claim_name}:{warm.pvc.path}"
    if warm.s3 is not None:
        return warm.s3.uri
    if warm.hugging_face is not None:
        return f"Hugging Face repository {warm.hugging_face.repo} (revision {warm.hugging_face.revision})"
    assert warm.oci is not None, "exactly one source is set (checked by the one-of rule)"
    return f"oci://{warm.oci.reference}"


def _fetch(warm: AdapterSource, spec: FineTuneJobSpec, runtime: Runtime, scratch: Path) -> Path:
    """The adapter's local folder (local rank 0 only), fetched unless it is on a volume."""
    if warm.pvc is not None:
        folder = runtime.claim_path(warm.pvc.claim_name, warm.pvc.path)
        return _adapter_in(readable(folder, f"warm start from {describe(warm)}"), warm, spec)
    # A fresh folder each time: one that an earlier attempt's marker names stays whole.
    folder = Path(tempfile.mkdtemp(prefix="adapter-", dir=scratch))
    if warm.s3 is not None:
        _from_bucket(warm.s3, folder, runtime)
    elif warm.hugging_face is not None:
        _from_hub(warm.hugging_face, folder, runtime, describe(warm))
    else:
        assert warm.oci is not None, "exactly one source is set (checked by the one-of rule)"
        Registry.open(warm.oci, runtime, pull=True).pull(folder)
    return _adapter_in(folder, warm, spec)


def _from_bucket(location: S3Location, folder: Path, runtime: Runtime) -> None:
    try:
        Bucket.open(location, runtime).download(folder, FETCHED_FILES)
    except InvalidData as error:  # the bucket speaks of datasets; here the spec names the adapter
        raise InvalidSpec(f"warm start: {error}") from None


def _from_hub(repo: HuggingFaceRepo, folder: Path, runtime: Runtime, where: str) -> None:
    from huggingface_hub import snapshot_download

    secret = repo.token_secret
    token = secret_value(runtime, secret.name, secret.key) if secret is not None else None
    try:
        snapshot_download(
            repo.repo,
            revision=repo.revision,
            token=token,
            endpoint=hub_endpoint(),
            local_dir=folder,
            cache_dir=runtime.work / "hf-cache",
            allow_patterns=HUB_PATTERNS,
        )
    except Exception as error:  # the Hub client raises many types; the message is what matters
        said = redact(str(error), token)
        raise disk_full(error, [folder]) or InvalidSpec(f"warm start from {where}: cannot download: {said}") from None


def _adapter_in(top: Path, warm: AdapterSource, spec: FineTuneJobSpec) -> Path:
    """The folder under `top` that holds the adapter (`top`, or its adapter/ folder), checked."""
    nested = top / OUTPUT_ADAPTER_FOLDER
    has_config = (top / ADAPTER_FILES[0]).is_file()
    folder = nested if not has_config and (nested / ADAPTER_FILES[0]).is_file() else top
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        pickles = sorted(path.name for pattern in PICKLED_WEIGHTS for path in folder.glob(pattern))
        found = f" (it holds {', '.join(pickles)}: pickled weights are refused, as loading them can run code)"
        raise InvalidSpec(
            f"warm start from {describe(warm)}: no {' and '.join(missing)} there{found if pickles else ''}; "
            "a warm start needs a peft adapter saved with safetensors, at the top or in an adapter/ folder"
        )
    _compare_base_model(folder, warm, spec)
    return folder


def _compare_base_model(folder: Path, warm: AdapterSource, spec: FineTuneJobSpec) -> None:
    """Warn when the adapter was trained on another model, where both name Hub repositories
    (a volume's path and a repository id may name the same model)."""
    try:
        config: Any = json.loads((folder / ADAPTER_FILES[0]).read_text())
        named = config.get("base_model_name_or_path")
    except (ValueError, AttributeError):
        raise InvalidSpec(f"warm start from {describe(warm)}: {ADAPTER_FILES[0]} is not a JSON object") from None
    trained_on = _repository_id(named) if isinstance(named, str) else None
    training = _repository_of(spec.model)
    if trained_on and training and trained_on.lower() != training.lower():
        log.warning(
            "the warm-start adapter %s was trained on %s, and this job trains %s: it loads only if the "
            "two share their architecture and shapes, and then starts from weights learnt for another model",
            describe(warm),
            trained_on,
            spec.model.display,
        )


def _repository_of(model: ModelSpec) -> str | None:
    """The Hub repository the job's model comes from; None for a model on a volume."""
    if model.preset is not None:
        return presets()[model.preset].repo
    return model.hugging_face.repo if model.hugging_face is not None else None


def _repository_id(name: str) -> str | None:
    """The Hub repository a model name stands for: an owner/name id, or the id inside a path
    into the Hub's cache (where kubetune's downloaded models lie); None for other paths."""
    cached = HUB_CACHE_FOLDER.search(name)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    return name if HUB_ID.fullmatch(name) else None
