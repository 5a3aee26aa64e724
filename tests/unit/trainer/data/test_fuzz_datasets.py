"""Property-based tests over generated dataset files, run through what the trainer runs
before a model loads: reading, checking every row, the label map, and (for causal-lm, with
the tiny test tokenizer) tokenisation.

The files are made to be wrong in the ways real ones are: malformed JSON lines, values of
the wrong type, missing or unknown roles, empty files, long lines, bytes that are not
UTF-8, ragged or badly quoted CSV, parquet that is not parquet, JSON that is not a list,
one format's content under another's suffix. The property: each file either passes, or
fails with InvalidData whose message names the file and, for a problem in a row, where
(line, item or row); nothing else is raised.

KUBETUNE_FUZZ_EXAMPLES sets the number of files per test (the default keeps the suite
quick); with -s the module prints how many passed and how many were refused.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kubetune.api import DataFormat, TaskType
from kubetune.api.enums import Objective
from kubetune.api.spec import DatasetSpec
from kubetune_trainer.data.pipeline import label_map, read_dataset, tokenize_dataset
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.runtime import Runtime

from ..conftest import memorise_spec

EXAMPLES = int(os.environ.get("KUBETUNE_FUZZ_EXAMPLES", "300"))
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COMBINATIONS = [(task, fmt) for task in TaskType for fmt in (DataFormat.AUTO, *task.formats)] + [
    (TaskType.CAUSAL_LM, DataFormat.PREFERENCE)  # read and encoded under objective dpo
]
LOCATED = re.compile(r"\b(line|item|row|byte) \d+")
WHOLE_FILE = ("holds no rows", "not a readable parquet file", "expected a list of objects", "nested too deep")
"""Verdicts on a file as a whole: they name the file, and there is no row to point at."""
WHOLE_DATASET = ("a classifier needs at least two", "no example is left to train on")
"""Verdicts on every example together (the label set, what tokenisation left)."""

OUTCOMES: Counter[str] = Counter()

# ----------------------------------------------------------------------------- values and rows

words = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
plain = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=16)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-2, 5), max_size=3),
    st.dictionaries(plain, st.integers(), max_size=2),
    words,
)
"""A value where a string (or a label) belongs."""
long_text = st.integers(100_000, 300_000).map(lambda n: "long " * (n // 5))
"""Longer than a CSV field may be by default."""
roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "", "Assistant"]), junk)


def _maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right kind of value, sometimes anything."""
    return st.one_of(*[values] * 24, junk)


def _one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in n draws. False, the undamaged case, is what hypothesis shrinks to
    (and draws most, where an integer range would favour its ends)."""
    return bool(draw(st.sampled_from([False] * (n - 1) + [True])))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, str]]:
    """Turns that pass the checks (perhaps after a system message), in any script."""
    system = [{"role": "system", "content": draw(words)}] if draw(st.booleans()) else []
    turns = draw(st.lists(st.tuples(words, st.text(min_size=1, max_size=24).filter(str.strip)), min_size=1, max_size=3))
    return system + [
        message
        for asked, answered in turns
        for message in ({"role": "user", "content": asked}, {"role": "assistant", "content": answered})
    ]


@st.composite
def messages(draw: st.DrawFn) -> Any:
    turn = st.fixed_dictionaries({"role": roles, "content": _maybe(words)})
    return draw(st.one_of(*[conversations()] * 8, st.lists(st.one_of(turn, junk), max_size=4), junk))


def _tokens_tags(draw: st.DrawFn) -> dict[str, Any]:
    """Words and one tag each (mostly), as lists or as space-separated strings."""
    tokens = draw(st.lists(_maybe(st.from_regex(r"[a-z]{1,6}", fullmatch=True)), min_size=1, max_size=5))
    count = draw(st.integers(0, 6)) if _one_in(draw, 10) else len(tokens)
    tags = [draw(_maybe(st.sampled_from(["O", "B-PER", "I-PER", 0, 1]))) for _ in range(count)]
    if draw(st.booleans()):
        return {"tokens": " ".join(str(t) for t in tokens), "tags": " ".join(str(t) for t in tags)}
    return {"tokens": tokens, "tags": tags}


ROWS: dict[DataFormat, Any] = {
    DataFormat.CHAT: lambda draw: {"messages": draw(messages())},
    DataFormat.INSTRUCTION: lambda draw: {
        "instruction": draw(_maybe(plain)),
        "input": draw(_maybe(words)),
        "output": draw(_maybe(plain)),
    },
    DataFormat.PROMPT_COMPLETION: lambda draw: {"prompt": draw(_maybe(words)), "completion": draw(_maybe(plain))},
    DataFormat.TEXT: lambda draw: {"text": draw(_maybe(st.one_of(plain, plain, plain, long_text)))},
    DataFormat.TEXT_LABEL: lambda draw: {
        "text": draw(_maybe(plain)),
        "label": draw(_maybe(st.sampled_from(["spam", "ham", "other", 0, 1, 2, -1]))),
        **({"text_pair": draw(_maybe(words))} if draw(st.booleans()) else {}),
    },
    DataFormat.TOKENS_TAGS: _tokens_tags,
    DataFormat.SOURCE_TARGET: lambda draw: {"source": draw(_maybe(plain)), "target": draw(_maybe(plain))},
    DataFormat.PREFERENCE: lambda draw: {
        "prompt": draw(_maybe(st.one_of(words, messages()))),
        "chosen": draw(_maybe(st.one_of(plain, plain, messages()))),
        "rejected": draw(_maybe(st.one_of(plain, plain, messages()))),
    },
}


@st.composite
def rows(draw: st.DrawFn, task: TaskType, fmt: DataFormat) -> list[Any]:
    """Rows of the format (one of the task's for auto), each perhaps in another format,
    missing a column, carrying an unknown one, or not an object at all."""
    main = draw(st.sampled_from(task.formats)) if fmt is DataFormat.AUTO else fmt

    def row() -> Any:
        fmt = draw(st.sampled_from(list(DataFormat)[1:])) if _one_in(draw, 30) else main
        values = ROWS[fmt](draw)
        if _one_in(draw, 15):
            match draw(st.sampled_from(["drop a column", "add a column", "not an object"])):
                case "drop a column":
                    values.pop(draw(st.sampled_from(sorted(values))), None)
                case "add a column":
                    values[draw(plain)] = draw(junk)
                case "not an object":
                    return draw(junk)
        return values

    return [] if _one_in(draw, 20) else [row() for _ in range(draw(st.integers(1, 6)))]


DAMAGED_JSON = [
    b"",
    b"   ",
    b'{"text": ',
    b"[1, 2",
    b"\xff\xfe{}",
    b"null",
    b"{'single': 'quotes'}",
    b"NaN",
    b'{"text": "a", "n": ' + b"9" * 5000 + b"}",  # more digits than Python converts
    b"[" * 50_000 + b"]" * 50_000,  # nested deeper than the parser recurses
    b'{"messages": ' + b"[" * 50_000,
]


# ----------------------------------------------------------------------------- files


def _jsonl(draw: st.DrawFn, items: list[Any]) -> bytes:
    lines = [json.dumps(item, ensure_ascii=draw(st.booleans())).encode() for item in items]
    if _one_in(draw, 6):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(DAMAGED_JSON)))
    if _one_in(draw, 20):
        lines.append(json.dumps({"text": "x" * draw(st.integers(10_000, 300_000))}).encode())
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    return newline.join(lines) + (newline if draw(st.booleans()) else b"")


def _json(draw: st.DrawFn, items: list[Any]) -> bytes:
    body: Any = draw(st.sampled_from(["list"] * 6 + ["data"] * 3 + ["object", "scalar", "damaged"]))
    if body == "damaged":
        return b"[" + draw(st.sampled_from(DAMAGED_JSON)) + b"]"
    value = {"list": items, "data": {"data": items}, "object": {"rows": items}, "scalar": draw(junk)}[body]
    return json.dumps(value, indent=draw(st.sampled_from([None, 2]))).encode()


def _csv(draw: st.DrawFn, items: list[Any]) -> bytes:
    objects = [item for item in items if isinstance(item, dict)]
    header = list(dict.fromkeys(key for item in objects for key in item))
    out = io.StringIO()
    writer = csv.writer(out, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    if header or draw(st.booleans()):
        writer.writerow(header)
    for item in objects:
        cells = [_cell(item.get(key, "")) for key in header]
        if _one_in(draw, 15):
            cells = [*cells, draw(words)] if draw(st.booleans()) else cells[:-1]
        writer.writerow(cells)
    text = out.getvalue()
    if _one_in(draw, 20):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(['"', '"unclosed', "\0", "\n\n", ","])) + text[cut:]
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode()


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _parquet(draw: st.DrawFn, items: list[Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    objects = [item for item in items if isinstance(item, dict)]
    sink = io.BytesIO()
    try:
        table = pa.Table.from_pylist(objects)
        if objects and _one_in(draw, 10):
            # A date column as exported by tools that write sentinel dates Python cannot hold.
            days = pa.array([draw(st.integers(0, 4_000_000)) for _ in objects], pa.int32())
            table = table.append_column("written", days.cast(pa.date32()))
        pq.write_table(table, sink)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        # Parquet stores neither mixed types in a column nor empty objects: such values
        # go in as JSON text, as a spreadsheet export would have them.
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: _cell(v) for k, v in item.items()} for item in objects]), sink)
    return sink.getvalue()


WRITERS = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}


@st.composite
def dataset_files(draw: st.DrawFn, task: TaskType, fmt: DataFormat) -> tuple[str, bytes]:
    """A file name and its bytes: written in its suffix's format, sometimes in another's,
    sometimes cut short or with stray bytes."""
    suffix = draw(st.sampled_from(SUFFIXES))
    written_as = draw(st.sampled_from(SUFFIXES)) if _one_in(draw, 16) else suffix
    content = WRITERS[written_as](draw, draw(rows(task, fmt)))
    if _one_in(draw, 10):
        match draw(st.sampled_from(["empty", "cut short", "stray bytes"])):
            case "empty":
                content = b""
            case "cut short":
                content = content[: draw(st.integers(0, len(content)))]
            case "stray bytes":
                at = draw(st.integers(0, len(content)))
                content = content[:at] + draw(st.binary(min_size=1, max_size=4)) + content[at:]
    return f"train{suffix}", content


# ----------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def tokenizer(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from kubetune_trainer.model import load_tokenizer, resolve_source

    work = tmp_path_factory.mktemp("work")
    runtime = Runtime.from_env({"KUBETUNE_VOLUMES": str(volumes), "KUBETUNE_WORK": str(work)})
    return load_tokenizer(resolve_source(memorise_spec("lora", ["adapter"]), runtime), runtime)


@pytest.fixture(scope="module", autouse=True)
def outcomes() -> Iterator[None]:
    yield
    print(f"\ngenerated datasets: {sum(OUTCOMES.values())}, " + ", ".join(f"{k} {v}" for k, v in OUTCOMES.items()))


def _prepare(name: str, content: bytes, task: TaskType, fmt: DataFormat, tokenizer: Any) -> None:
    """What the trainer does with a dataset before loading the model."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "data").mkdir()
        (Path(folder) / "data" / name).write_bytes(content)
        runtime = Runtime.from_env({"KUBETUNE_VOLUMES": folder, "KUBETUNE_WORK": f"{folder}/work"})
        dataset = DatasetSpec.model_validate(
            {"pvc": {"claimName": "data", "path": name}, "format": fmt.value, "maxSeqLength": 64}
        )
        objective = Objective.DPO if fmt is DataFormat.PREFERENCE else Objective.SFT
        sets = read_dataset(dataset, runtime, seed=0, task=task, objective=objective)
        labels = label_map(sets, dataset, task)
        if task is TaskType.CAUSAL_LM:
            tokenize_dataset(sets, dataset, tokenizer, task, labels, objective)


def _check_refusal(message: str, name: str) -> str:
    """Which kind of refusal a message is; fails when it does not say where."""
    if any(verdict in message for verdict in WHOLE_DATASET):
        return "refused: whole dataset"
    assert name in message, f"the message does not name {name}: {message}"
    if any(verdict in message for verdict in WHOLE_FILE):
        return "refused: whole file"
    assert LOCATED.search(message), f"the message does not say where in {name}: {message}"
    return "refused: located"


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data(), combination=st.sampled_from(COMBINATIONS))
def test_every_dataset_file_passes_or_is_refused_saying_where(
    data: st.DataObject, combination: tuple[TaskType, DataFormat], tokenizer: Any
) -> None:
    task, fmt = combination
    name, content = data.draw(dataset_files(task, fmt))

    try:
        _prepare(name, content, task, fmt, tokenizer)
    except InvalidData as error:
        outcome = _check_refusal(str(error), name)
    else:
        outcome = "passed"
    OUTCOMES[outcome] += 1
    event(outcome)
