"""The preflight's tokenised data, kept for the training run: read back equal for every task,
missed when anything it depends on changes, and ignored (then made again) when damaged."""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.api import FineTuneJobSpec
from kubetune_trainer.data.cache import LAYOUTS, MANIFEST, MARKER, CheckedData, cache_folder, check_data
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
from kubetune_trainer.data.pipeline import PreparedData, label_map, read_dataset, tokenize_dataset
from kubetune_trainer.data.preference import EncodedPair
from kubetune_trainer.data.tokenize import ClassifiedExample, TokenizedExample
from kubetune_trainer.model import load_tokenizer, resolve_source
from kubetune_trainer.preflight import check
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.tasks import task_for

from ..conftest import memorise_spec, task_spec

REUSED = "reused the tokenised data from"


def tokenizer_for(spec: FineTuneJobSpec, runtime: Runtime) -> Any:
    tokenizer = load_tokenizer(resolve_source(spec, runtime), runtime)
    task_for(spec.task).prepare_tokenizer(tokenizer)
    return tokenizer


def data_step(spec: FineTuneJobSpec, runtime: Runtime, tokenizer: Any = None) -> tuple[CheckedData, PreparedData]:
    """What train.py does with the data, as rank 0."""
    checked = check_data(spec, runtime)
    return checked, checked.tokenize(tokenizer or tokenizer_for(spec, runtime), write=True)


def uncached(spec: FineTuneJobSpec, runtime: Runtime, tokenizer: Any = None) -> PreparedData:
    sets = read_dataset(spec.dataset, runtime, spec.training.seed, spec.task)
    labels = label_map(sets, spec.dataset, spec.task)
    return tokenize_dataset(sets, spec.dataset, tokenizer or tokenizer_for(spec, runtime), spec.task, labels)


def entries(runtime: Runtime) -> list[Path]:
    assert runtime.output_override is not None
    return sorted((runtime.output_override / "checkpoints" / ".kubetune").glob("tokenized-*"))


@pytest.fixture(autouse=True)
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="kubetune_trainer.data.cache")
    return caplog


# ----------------------------------------------------------------------------- layouts

VALUES: dict[str, list[Any]] = {
    "TokenizedExample": [TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([7], [-100])],
    "ClassifiedExample": [
        ClassifiedExample([101, 5, 102], 1),
        ClassifiedExample([101, 6, 102, 7, 102], 0, [0, 0, 0, 1, 1]),
        ClassifiedExample([101, 102], 2, []),
    ],
    "Conversation": [Conversation((Message("system", "be brief"), Message("user", "hi"), Message("assistant", "yo")))],
    "Completion": [Completion("", "a completion"), Completion("a prompt", "ü ∑ 🚀")],
    "Text": [Text("plain text\nover two lines")],
    "LabelledText": [LabelledText("a text", "positive", None, "line 1"), LabelledText("one", 3, "two", "line 2")],
    "TaggedWords": [TaggedWords(("Ada", "visited", "Paris"), ("B-PER", "O", 4), "line 3")],
    "EncodedPair": [EncodedPair([1, 2], [-100, 2], [1, 3, 4], [-100, 3, 4])],
    "TextPreference": [TextPreference("", "yes", "no"), TextPreference("a prompt", "ü ∑ 🚀", "a rejected answer")],
    "ChatPreference": [
        ChatPreference(
            (Message("system", "be brief"), Message("user", "hi")),
            (Message("assistant", "yo"),),
            (Message("assistant", "go away"), Message("user", "why?"), Message("assistant", "because")),
        )
    ],
}


def test_every_layout_has_a_column_for_each_field_and_a_test() -> None:
    for name, layout in LAYOUTS.items():
        assert layout.schema.names == [f.name for f in dataclasses.fields(layout.kind)], name
    assert VALUES.keys() == LAYOUTS.keys()


@pytest.mark.parametrize("name", VALUES)
def test_values_come_back_equal_and_of_their_type(name: str, tmp_path: Path) -> None:
    layout = LAYOUTS[name]
    pq.write_table(layout.table(VALUES[name]), tmp_path / "values.parquet")
    pq.write_table(layout.table([]), tmp_path / "none.parquet")

    back = layout.values(pq.read_table(tmp_path / "values.parquet"))

    assert back == VALUES[name]
    assert [type(v) for v in back] == [type(v) for v in VALUES[name]]
    assert layout.values(pq.read_table(tmp_path / "none.parquet")) == []


# ----------------------------------------------------------------------------- the round trip

TASKS = {
    "causal-lm": lambda: memorise_spec("lora", ["adapter"]),
    "causal-lm-packed": lambda: memorise_spec("lora", ["adapter"], dataset={"packing": True}),
    "sequence-classification": lambda: task_spec(
        "sequence-classification", "all-minilm-l6-v2", "topics", "lora", ["adapter"]
    ),
    "token-classification": lambda: task_spec(
        "token-classification", "all-minilm-l6-v2", "entities", "lora", ["adapter"]
    ),
    "seq2seq": lambda: task_spec("seq2seq", "tiny-t5", "pairs", "lora", ["adapter"]),
}


@pytest.mark.parametrize("task", TASKS)
def test_the_run_reads_back_what_the_preflight_tokenised(
    task: str, task_volumes: Path, runtime: Runtime, logs: pytest.LogCaptureFixture
) -> None:
    spec = TASKS[task]()
    check(spec, runtime)
    sets = read_dataset(spec.dataset, runtime, spec.training.seed, spec.task)

    checked, data = data_step(spec, runtime)

    assert not checked.read, "the dataset is not read again"
    assert f"{REUSED} the preflight" in logs.text
    assert data == uncached(spec, runtime)
    assert checked.labels == label_map(sets, spec.dataset, spec.task)
    assert (checked.examples.eval or checked.examples.train) == (sets.eval or sets.train)  # the samples' pool


def test_a_training_run_keeps_its_data_for_the_next_attempt_and_only_rank_0_writes(
    runtime: Runtime, logs: pytest.LogCaptureFixture
) -> None:
    spec = memorise_spec("lora", ["adapter"])
    tokenizer = tokenizer_for(spec, runtime)

    check_data(spec, runtime).tokenize(tokenizer, write=False)
    assert entries(runtime) == []

    first, data = data_step(spec, runtime, tokenizer)
    second, again = data_step(spec, runtime, tokenizer)

    assert first.read and not second.read
    assert f"{REUSED} a training run" in logs.text
    assert again == data


# ----------------------------------------------------------------------------- misses


@pytest.mark.parametrize(
    "changes",
    [{"dataset": {"maxSeqLength": 32}}, {"dataset": {"truncation": "drop"}}, {"training": {"seed": 7}}],
    ids=["maxSeqLength", "truncation", "seed"],
)
def test_another_dataset_spec_or_seed_misses_the_cache(
    changes: dict[str, Any], runtime: Runtime, logs: pytest.LogCaptureFixture
) -> None:
    check(memorise_spec("lora", ["adapter"]), runtime)
    other = memorise_spec("lora", ["adapter"], **changes)

    checked, data = data_step(other, runtime)

    assert checked.read
    assert REUSED not in logs.text
    assert data == uncached(other, runtime)


def test_a_dataset_file_changed_in_place_on_the_volume_misses_the_cache(
    runtime: Runtime, logs: pytest.LogCaptureFixture
) -> None:
    rows = runtime.claim_path("data", "train.jsonl").read_text().splitlines(keepends=True)
    file = runtime.claim_path("data", f"{runtime.work.parent.name}.jsonl")  # the volumes are shared: a file of its own
    file.write_text("".join(rows))
    spec = memorise_spec("lora", ["adapter"], dataset={"pvc": {"claimName": "data", "path": file.name}})
    check(spec, runtime)
    file.write_text("".join(rows[:-1]))  # the same name, one row fewer

    checked, data = data_step(spec, runtime)

    assert checked.read
    assert REUSED not in logs.text
    assert data == uncached(spec, runtime)


def test_another_tokenizer_misses_the_cache(runtime: Runtime, logs: pytest.LogCaptureFixture) -> None:
    spec = memorise_spec("lora", ["adapter"])
    check(spec, runtime)
    tokenizer = tokenizer_for(spec, runtime)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|", "<<|")

    checked, data = data_step(spec, runtime, tokenizer)

    assert not checked.read, "the labels and samples do not depend on the tokenizer"
    assert REUSED not in logs.text
    assert data == uncached(spec, runtime, tokenizer)


def test_the_tokenizer_key_ignores_where_it_came_from_and_its_last_call(runtime: Runtime, tmp_path: Path) -> None:
    from kubetune_trainer.data.cache import tokenizer_key

    spec = memorise_spec("lora", ["adapter"])
    tokenizer = tokenizer_for(spec, runtime)
    tokenizer.save_pretrained(tmp_path / "copy")
    copy = load_tokenizer(dataclasses.replace(resolve_source(spec, runtime), location=str(tmp_path / "copy")), runtime)

    key = tokenizer_key(tokenizer)
    tokenizer("a long text " * 50, truncation=True, max_length=8)

    assert tokenizer_key(tokenizer) == key == tokenizer_key(copy)
    copy.model_max_length = 16
    assert tokenizer_key(copy) != key


# ----------------------------------------------------------------------------- damage


def _manifest(entry: Path) -> dict[str, Any]:
    return json.loads((entry / MANIFEST).read_text())  # type: ignore[no-any-return]


def _rewrite(entry: Path, name: str, content: bytes) -> None:
    """Replace a file and make the manifest vouch for it, so that only its content is wrong."""
    import hashlib

    (entry / name).write_bytes(content)
    manifest = _manifest(entry)
    manifest["files"][name] |= {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (entry / MANIFEST).write_text(json.dumps(manifest))


def _set(entry: Path, **changes: Any) -> None:
    (entry / MANIFEST).write_text(json.dumps(_manifest(entry) | changes))


def _foreign_table() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"input_ids": [[1, 2]], "attention_mask": [[1, 1]]}), sink)
    return bytes(sink.getvalue().to_pybytes())


DAMAGE: dict[str, Callable[[Path], object]] = {
    "no marker": lambda entry: (entry / MARKER).unlink(),
    "truncated": lambda entry: (entry / "train.parquet").write_bytes((entry / "train.parquet").read_bytes()[:100]),
    "truncated, vouched for": lambda entry: _rewrite(
        entry, "train.parquet", (entry / "train.parquet").read_bytes()[:100]
    ),
    "other columns": lambda entry: _rewrite(entry, "train.parquet", _foreign_table()),
    "version 2": lambda entry: _set(entry, version=2),
    "other kubetune": lambda entry: _set(entry, kubetune="0.0.1"),
    "manifest not json": lambda entry: (entry / MANIFEST).write_text("{'version': 1"),
    "stats of strings": lambda entry: _set(entry, stats=_manifest(entry)["stats"] | {"kept": "8"}),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_ignored_with_a_warning_then_made_again(
    damage: str, runtime: Runtime, logs: pytest.LogCaptureFixture
) -> None:
    spec = memorise_spec("lora", ["adapter"])
    check(spec, runtime)
    [entry] = entries(runtime)
    DAMAGE[damage](entry)
    logs.clear()

    _, data = data_step(spec, runtime)

    assert REUSED not in logs.text
    assert [r for r in logs.records if r.levelno == logging.WARNING and "ignoring" in r.getMessage()]
    assert data == uncached(spec, runtime)
    _, again = data_step(spec, runtime)
    assert f"{REUSED} a training run" in logs.text, "rank 0 wrote it again"
    assert again == data


class Trap:
    """Unpickled, it would create a file: proof that code ran."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.flag), "w"))


@pytest.mark.parametrize("name", ["train.parquet", "examples.parquet", MANIFEST])
def test_a_pickle_in_the_cache_is_never_unpickled(
    name: str, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    spec = memorise_spec("lora", ["adapter"])
    check(spec, runtime)
    [entry] = entries(runtime)
    flag = tmp_path / "unpickled"
    payload = pickle.dumps(Trap(flag))
    if name == MANIFEST:
        (entry / name).write_bytes(payload)
    else:
        _rewrite(entry, name, payload)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    _, data = data_step(spec, runtime)

    assert not flag.exists()
    assert "ignoring the tokenised data" in logs.text
    assert data == uncached(spec, runtime)


# ----------------------------------------------------------------------------- where


def _spec(**changes: Any) -> FineTuneJobSpec:
    return memorise_spec("lora", ["adapter"], **changes)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_spec(), "results/lora/checkpoints/.kubetune"),
        (_spec(checkpoint={"location": {"pvc": {"claimName": "data", "path": "ckpt"}}}), "data/ckpt/.kubetune"),
        (_spec(output={"pvc": {"claimName": "not-mounted", "path": "x"}}), None),
    ],
    ids=["output volume", "checkpoint volume", "claim not mounted"],
)
def test_the_cache_lies_with_the_checkpoints_on_a_mounted_volume(
    spec: FineTuneJobSpec, expected: str | None, runtime: Runtime
) -> None:
    on_cluster = dataclasses.replace(runtime, output_override=None)
    (runtime.volumes / "results").mkdir(exist_ok=True)

    folder = cache_folder(spec, on_cluster)

    assert folder == (runtime.volumes / expected if expected else None)


def test_no_cache_is_kept_in_the_pod_scratch(runtime: Runtime) -> None:
    spec = _spec(output={"pvc": None, "s3": {"uri": "s3://bucket/run"}})

    assert cache_folder(spec, dataclasses.replace(runtime, output_override=None)) is None
