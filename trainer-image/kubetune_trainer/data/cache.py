"""The tokenised data a preflight leaves for its training run, on the job's checkpoint storage,
so that the run neither reads the dataset again nor tokenises it.

A cache is the folder `<checkpoints>/.kubetune/tokenized-<data key>-<tokenizer key>/`:

- `train.parquet`, `eval.parquet`: every kept example encoded on its own (before packing),
  one column per field of the task's item type;
- `examples.parquet`: the checked examples the run picks its before/after samples from
  (the evaluation examples, else the training ones);
- `manifest.json`: the format version, the full keys, the counts, the detected format, the
  label names, and the type, row count, size and SHA-256 of every parquet file;
- `COMPLETE`, written last.

It is written in a folder aside and renamed into place, so a reader finds all of it or
none. Nothing in it is pickled: parquet tables of a fixed schema per type, and JSON. A cache
that differs in any respect is logged and ignored, and the run computes its data as if there
were none: a cache can make a run faster, never wrong, and never stops one.

The data key covers the dataset spec, the task, the seed, this format's version and
kubetune's; the tokenizer key, everything the tokenizer saves. The key names the data the
spec points at, not the bytes read: a file changed in place after the preflight is not
seen by the run, nor by its later attempts, which so resume on the data they started with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from kubetune import __version__
from kubetune.api import DataFormat
from kubetune.api.spec import FineTuneJobSpec
from kubetune_trainer.data.formats import (
    ChatPreference,
    Completion,
    Conversation,
    LabelledText,
    Message,
    TaggedWords,
    Text,
    TextPreference,
)
from kubetune_trainer.data.pipeline import (
    EncodedData,
    ExampleSets,
    PreparedData,
    arrange,
    encode_dataset,
    label_map,
    read_dataset,
)
from kubetune_trainer.data.preference import EncodedPair
from kubetune_trainer.data.sources import mounted_files
from kubetune_trainer.data.tokenize import ClassifiedExample, DataStats, TokenizedExample
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.model import write_marker
from kubetune_trainer.outputs import checkpoint_folder, output_folder
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tasks.labels import Label, LabelMap

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Raise it whenever what a cache holds, or how, changes: it is part of the key, so caches of
another version are not even looked at."""
MANIFEST = "manifest.json"
MARKER = "COMPLETE"
EXAMPLES = "examples.parquet"
SETS = {"train": "train.parquet", "eval": "eval.parquet"}


class CacheMismatch(Exception):
    """A cache that cannot be trusted, and why."""


# ----------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """How one type of item or example lies in a parquet table: a fixed schema, and each value
    turned into its row of column values (in the schema's order) and back."""

    kind: type
    schema: pa.Schema
    to_row: Callable[[Any], tuple[Any, ...]]
    from_row: Callable[..., Any]

    def table(self, values: Sequence[Any]) -> pa.Table:
        columns = list(zip(*(self.to_row(value) for value in values), strict=True)) or [()] * len(self.schema)
        arrays = [pa.array(column, type=field.type) for column, field in zip(columns, self.schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def values(self, table: pa.Table) -> list[Any]:
        if not table.schema.equals(self.schema):
            raise CacheMismatch(f"{self.kind.__name__} columns are {table.schema}, expected {self.schema}")
        columns = [column.to_pylist() for column in table.columns]
        return [self.from_row(*row) for row in zip(*columns, strict=True)]


def _required(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


_IDS = pa.list_(_required("item", pa.int32()))
_TEXT = pa.string()
_MESSAGES = pa.list_(pa.struct([_required("role", _TEXT), _required("content", _TEXT)]))
# A label as the data gave it: a name or an id (a parquet column holds one type).
_LABEL = pa.struct([pa.field("name", pa.string()), pa.field("id", pa.int64())])


def _label_in(label: Label) -> dict[str, Any]:
    return {"name": label, "id": None} if isinstance(label, str) else {"name": None, "id": label}


def _label_out(value: dict[str, Any]) -> Label:
    name, number = value["name"], value["id"]
    if (name is None) == (number is None):
        raise CacheMismatch(f"a label is neither a name nor an id: {value}")
    return name if name is not None else number  # type: ignore[no-any-return]


def _messages_in(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _messages_out(values: list[dict[str, str]]) -> tuple[Message, ...]:
    return tuple(Message(m["role"], m["content"]) for m in values)


def _layouts(*layouts: Layout) -> dict[str, Layout]:
    return {layout.kind.__name__: layout for layout in layouts}


LAYOUTS = _layouts(
    # The encoded items of every task.
    Layout(
        TokenizedExample,
        pa.schema([_required("input_ids", _IDS), _required("labels", _IDS)]),
        lambda item: (item.input_ids, item.labels),
        TokenizedExample,
    ),
    Layout(
        ClassifiedExample,
        pa.schema([_required("input_ids", _IDS), _required("label", pa.int64()), pa.field("token_type_ids", _IDS)]),
        lambda item: (item.input_ids, item.label, item.token_type_ids),
        ClassifiedExample,
    ),
    Layout(
        EncodedPair,
        pa.schema(
            [_required(name, _IDS) for name in ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")]
        ),
        lambda item: (item.chosen_ids, item.chosen_labels, item.rejected_ids, item.rejected_labels),
        EncodedPair,
    ),
    # The checked examples of every format.
    Layout(
        Conversation,
        pa.schema([_required("messages", _MESSAGES)]),
        lambda example: (_messages_in(example.messages),),
        lambda messages: Conversation(_messages_out(messages)),
    ),
    Layout(
        TextPreference,
        pa.schema([_required(name, _TEXT) for name in ("prompt", "chosen", "rejected")]),
        lambda example: (example.prompt, example.chosen, example.rejected),
        TextPreference,
    ),
    Layout(
        ChatPreference,
        pa.schema([_required(name, _MESSAGES) for name in ("prompt", "chosen", "rejected")]),
        lambda example: tuple(_messages_in(part) for part in (example.prompt, example.chosen, example.rejected)),
        lambda *parts: ChatPreference(*(_messages_out(part) for part in parts)),
    ),
    Layout(
        Completion,
        pa.schema([_required("prompt", _TEXT), _required("completion", _TEXT)]),
        lambda example: (example.prompt, example.completion),
        Completion,
    ),
    Layout(Text, pa.schema([_required("text", _TEXT)]), lambda example: (example.text,), Text),
    Layout(
        LabelledText,
        pa.schema(
            [
                _required("text", _TEXT),
                _required("label", _LABEL),
                pa.field("text_pair", _TEXT),
                _required("where", _TEXT),
            ]
        ),
        lambda example: (example.text, _label_in(example.label), example.text_pair, example.where),
        lambda text, label, pair, where: LabelledText(text, _label_out(label), pair, where),
    ),
    Layout(
        TaggedWords,
        pa.schema(
            [
                _required("tokens", pa.list_(_required("item", _TEXT))),
                _required("tags", pa.list_(_required("item", _LABEL))),
                _required("where", _TEXT),
            ]
        ),
        lambda example: (list(example.tokens), [_label_in(tag) for tag in example.tags], example.where),
        lambda tokens, tags, where: TaggedWords(tuple(tokens), tuple(_label_out(tag) for tag in tags), where),
    ),
)


# ----------------------------------------------------------------------------- keys

# Where the tokenizer was loaded from: the preflight loads it from the model's source, the
# training run from its downloaded copy.
_LOCATION_SETTINGS = frozenset({"name_or_path", "is_local", "local_files_only", "_commit_hash", "cache_dir", "token"})
# Left in the backend by the last call (transformers sets both on every call).
_CALL_SETTINGS = frozenset({"truncation", "padding"})


def data_key(spec: FineTuneJobSpec, runtime: Runtime) -> str:
    """What decides the checked examples and how they are encoded, besides the tokenizer:
    the spec, and the size and modification time of each file a volume or ConfigMap source
    reads (a file changed in place on the volume is read again)."""
    sources = [spec.dataset, *([spec.dataset.evaluation.source] if spec.dataset.evaluation else [])]
    files = [
        [str(file), stat.st_size, stat.st_mtime_ns]
        for source in sources
        if source is not None
        for file in mounted_files(source, runtime)
        for stat in [file.stat()]
    ]
    parts = {
        "version": CACHE_VERSION,
        "kubetune": __version__,
        "task": spec.task.value,
        "objective": spec.objective.value,
        "seed": spec.training.seed,
        "dataset": spec.dataset.model_dump(mode="json", by_alias=True),
        "files": files,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenizer_key(tokenizer: Any) -> str:
    """A hash of everything the tokenizer saves (vocabulary, special tokens, chat template,
    length limit, truncation side), less where it came from and what its last call left."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            content = file.read_bytes()
            dropped = {"tokenizer_config.json": _LOCATION_SETTINGS, "tokenizer.json": _CALL_SETTINGS}.get(file.name)
            if dropped:
                settings = {k: v for k, v in json.loads(content).items() if k not in dropped}
                content = json.dumps(settings, sort_keys=True).encode()
            name = file.relative_to(folder).as_posix().encode()
            digest.update(b"%d:%s%d:" % (len(name), name, len(content)) + content)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    data: str
    tokenizer: str

    @classmethod
    def of(cls, data: str, tokenizer: Any) -> CacheKey | None:
        """The key of a run's data (its `data_key`) with this tokenizer, or None (logged) for a
        tokenizer that cannot save itself."""
        try:
            return cls(data, tokenizer_key(tokenizer))
        except Exception as error:  # a tokenizer's own code saves it; the cache is only a saving
            log.warning("the tokenised data is not cached: the tokenizer cannot be saved (%s)", error)
            return None

    @property
    def name(self) -> str:
        return f"{_prefix(self.data)}{self.tokenizer[:16]}"


def _prefix(data: str) -> str:
    return f"tokenized-{data[:16]}-"


# ----------------------------------------------------------------------------- the manifest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileFacts(_Strict):
    type: str
    rows: int
    bytes: int
    sha256: str


class Manifest(_Strict):
    version: int
    kubetune: str
    data_key: str
    tokenizer_key: str
    written_by: str
    format: str
    labels: list[str] | None
    stats: DataStats
    shown: Literal["train", "eval"]
    """Which set examples.parquet holds."""
    files: dict[str, FileFacts]

    @property
    def label_names(self) -> LabelMap | None:
        return LabelMap(tuple(self.labels)) if self.labels is not None else None


def _manifest(entry: Path, data: str, tokenizer: str | None = None) -> Manifest:
    """The manifest of a complete cache of these keys (the tokenizer's when given). Raises
    CacheMismatch, OSError or ValueError."""
    if not (entry / MARKER).is_file():
        raise CacheMismatch(f"it was never completed (no {MARKER} marker)")
    text = (entry / MANIFEST).read_text()
    raw = json.loads(text)
    if not isinstance(raw, dict) or raw.get("version") != CACHE_VERSION:
        found = raw.get("version") if isinstance(raw, dict) else None
        raise CacheMismatch(f"it is in format version {found}; this trainer reads version {CACHE_VERSION}")
    manifest = Manifest.model_validate_json(text)
    if manifest.kubetune != __version__:
        raise CacheMismatch(f"kubetune {manifest.kubetune} wrote it; this is kubetune {__version__}")
    if manifest.data_key != data:
        raise CacheMismatch("it was made from another dataset spec, task or seed")
    if tokenizer is not None and manifest.tokenizer_key != tokenizer:
        raise CacheMismatch("it was made with another tokenizer")
    return manifest


def _load(entry: Path, manifest: Manifest, name: str) -> list[Any]:
    facts = manifest.files.get(name)
    if facts is None or facts.type not in LAYOUTS:
        raise CacheMismatch(f"{name} is not listed, or holds an unknown type")
    file = entry / name
    with file.open("rb") as handle:
        size, digest = file.stat().st_size, hashlib.file_digest(handle, "sha256").hexdigest()
    if (size, digest) != (facts.bytes, facts.sha256):
        raise CacheMismatch(f"{name} is not the file that was written ({size} bytes, {facts.bytes} expected)")
    # Extension types are the one place a parquet file could name Python code to run.
    table = pq.ParquetFile(file, arrow_extensions_enabled=False).read(use_threads=False)
    values = LAYOUTS[facts.type].values(table)
    if len(values) != facts.rows:
        raise CacheMismatch(f"{name} has {len(values)} rows, {facts.rows} expected")
    return values


_UNREADABLE = (CacheMismatch, OSError, ValueError, TypeError, KeyError, pa.ArrowException)
"""What a damaged or foreign cache raises on the way in (pydantic's ValidationError is a ValueError)."""


# ----------------------------------------------------------------------------- writing


def write_cache(
    root: Path, key: CacheKey, encoded: EncodedData, labels: LabelMap | None, sets: ExampleSets, written_by: str
) -> Path:
    """Write the cache of `key` under root, replacing any there. Raises CacheMismatch (a type
    with no layout), OSError or an ArrowException."""
    shown: Literal["train", "eval"] = "eval" if sets.eval else "train"
    contents = {
        SETS["train"]: encoded.train,
        SETS["eval"]: encoded.eval,
        EXAMPLES: sets.eval or sets.train,
    }
    root.mkdir(parents=True, exist_ok=True)
    final = root / key.name
    aside = root / f".{key.name}.{os.getpid()}.tmp"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir()
    try:
        files = {name: _write(aside / name, values, encoded.train[0]) for name, values in contents.items()}
        manifest = Manifest(
            version=CACHE_VERSION,
            kubetune=__version__,
            data_key=key.data,
            tokenizer_key=key.tokenizer,
            written_by=written_by,
            format=encoded.format.value,
            labels=list(labels.names) if labels is not None else None,
            stats=encoded.stats,
            shown=shown,
            files=files,
        )
        (aside / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        write_marker(aside / MARKER, key.name)
        _swap_in(aside, final)
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def _write(file: Path, values: Sequence[Any], fallback: Any) -> FileFacts:
    """One parquet file of values of one type (`fallback`'s, when there are none)."""
    kinds = {type(value) for value in values} or {type(fallback)}
    layout = LAYOUTS.get(next(iter(kinds)).__name__) if len(kinds) == 1 else None
    if layout is None or {layout.kind} != kinds:
        raise CacheMismatch(f"no cache layout for {', '.join(sorted(k.__name__ for k in kinds))}")
    pq.write_table(layout.table(values), file)
    with file.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return FileFacts(type=layout.kind.__name__, rows=len(values), bytes=file.stat().st_size, sha256=digest)


def _swap_in(aside: Path, final: Path) -> None:
    """Rename the written folder into place; one left there before (damaged, or of an older
    run) is moved away first and then deleted."""
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        final.rename(old)
    aside.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the data step


def cache_folder(spec: FineTuneJobSpec, runtime: Runtime) -> Path | None:
    """`<checkpoints>/.kubetune`, where the preflight and every training pod find it; None
    when the checkpoints stay in a pod's scratch (no other pod would see them)."""
    try:
        checkpoints = checkpoint_folder(spec, runtime, output_folder(spec, runtime))
    except InvalidSpec:
        return None  # the run itself says why
    if checkpoints.is_relative_to(runtime.work):
        return None
    if checkpoints.is_relative_to(runtime.volumes):
        # A claim this pod does not mount would be a folder in its own file system.
        claim = checkpoints.relative_to(runtime.volumes).parts[:1]
        if not claim or not (runtime.volumes / claim[0]).is_dir():
            return None
    return checkpoints / ".kubetune"


def _keep(
    root: Path | None, key: CacheKey, encoded: EncodedData, labels: LabelMap | None, sets: ExampleSets, written_by: str
) -> Path | None:
    if root is None:
        log.info("the tokenised data is not kept: the checkpoints are not on a volume the training pods share")
        return None
    try:
        entry = write_cache(root, key, encoded, labels, sets, written_by)
    except _UNREADABLE as error:
        log.warning("the tokenised data could not be kept in %s: %s", root, error)
        return None
    log.info("kept the tokenised data for the training run in %s", entry)
    return entry


@dataclass(frozen=True)
class CheckedData:
    """The checked data of a run, before any tokenizer: its label names, and its examples.

    When the preflight left a cache for this spec, the dataset is not read again and the
    examples are only the set the samples are picked from (the evaluation examples, else the
    training ones)."""

    examples: ExampleSets
    labels: LabelMap | None
    spec: FineTuneJobSpec
    runtime: Runtime
    root: Path | None
    data_key: str
    """The data's key, taken once before the dataset was read (with its files as they were)."""
    read: bool
    """Whether the dataset was read (else the examples came from a cache)."""
    ignored: tuple[Path, ...] = ()
    """Caches found damaged already (and said so)."""

    def tokenize(self, tokenizer: Any, write: bool, kept_by: str = "a training run") -> PreparedData:
        """The run's data: from the cache that matches the (prepared) tokenizer too, else
        encoded here and, when `write` (rank 0), kept for the next pod (`kept_by` says whose
        it is in the cache's manifest: the preflight, or a training run)."""
        spec = self.spec
        key = CacheKey.of(self.data_key, tokenizer)
        encoded = self._cached(key) if key is not None else None
        if encoded is None:
            # The label names stay those found first: the model's head is built to them.
            sets = (
                self.examples
                if self.read
                else read_dataset(spec.dataset, self.runtime, spec.training.seed, spec.task, spec.objective)
            )
            encoded = encode_dataset(sets, spec.dataset, tokenizer, spec.task, self.labels, spec.objective)
            if write and key is not None:
                _keep(self.root, key, encoded, self.labels, sets, kept_by)
        return arrange(encoded, spec.dataset, spec.task, spec.objective)

    def _cached(self, key: CacheKey) -> EncodedData | None:
        entry = self.root / key.name if self.root is not None else None
        if entry is None or entry in self.ignored or not entry.exists():
            return None
        try:
            manifest = _manifest(entry, key.data, key.tokenizer)
            if manifest.label_names != self.labels:
                raise CacheMismatch("its label names are not those of the checked data")
            train, evaluation = (_load(entry, manifest, SETS[name]) for name in ("train", "eval"))
            encoded = EncodedData(train, evaluation, dataclasses.replace(manifest.stats), DataFormat(manifest.format))
        except _UNREADABLE as error:
            log.warning("ignoring the tokenised data in %s and tokenising again: %s", entry, error)
            return None
        log.info(
            "reused the tokenised data from %s (%d training and %d evaluation examples, key %s)",
            manifest.written_by,
            len(train),
            len(evaluation),
            key.name,
        )
        return encoded


def check_data(spec: FineTuneJobSpec, runtime: Runtime) -> CheckedData:
    """The label names and examples of a run: from a cache of this spec when a preflight left
    one (whatever its tokenizer), else read and checked, before any model is fetched."""
    root = cache_folder(spec, runtime)
    key = data_key(spec, runtime)
    ignored: list[Path] = []
    for entry in _entries(root, key):
        try:
            manifest = _manifest(entry, key)
            shown = _load(entry, manifest, EXAMPLES)
            sets = ExampleSets(
                shown if manifest.shown == "train" else [],
                shown if manifest.shown == "eval" else [],
                DataFormat(manifest.format),
            )
        except _UNREADABLE as error:
            log.warning("ignoring the tokenised data in %s: %s", entry, error)
            ignored.append(entry)
            continue
        log.info("the dataset was checked by %s; its labels and samples come from %s", manifest.written_by, entry)
        return CheckedData(sets, manifest.label_names, spec, runtime, root, key, read=False, ignored=tuple(ignored))
    return read_data(spec, runtime, key, tuple(ignored))


def read_data(
    spec: FineTuneJobSpec, runtime: Runtime, key: str | None = None, ignored: tuple[Path, ...] = ()
) -> CheckedData:
    """The dataset read and checked, whatever a cache holds (the preflight's way). The data's
    key is taken before the files are read: a file changed while it is read is keyed as it
    was, and read again by the next pod."""
    key = key if key is not None else data_key(spec, runtime)
    sets = read_dataset(spec.dataset, runtime, spec.training.seed, spec.task, spec.objective)
    labels = label_map(sets, spec.dataset, spec.task)
    return CheckedData(sets, labels, spec, runtime, cache_folder(spec, runtime), key, read=True, ignored=ignored)


def _entries(root: Path | None, data: str) -> list[Path]:
    """The caches of this data, whatever their tokenizer."""
    if root is None:
        return []
    try:
        return sorted(root.glob(f"{_prefix(data)}*"))
    except OSError as error:
        log.warning("cannot look for tokenised data in %s: %s", root, error)
        return []
