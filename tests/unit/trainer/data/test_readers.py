"""Every kind of bad file ends in a located InvalidData, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_trainer.data.readers import read_rows
from kubetune_trainer.errors import InvalidData


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_jsonl_rows_carry_their_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.jsonl", '{"text": "a"}\n\n{"text": "b"}\n')

    rows = list(read_rows(path))

    assert [(r.values["text"], r.where) for r in rows] == [("a", "train.jsonl line 1"), ("b", "train.jsonl line 3")]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', r"bad.jsonl line 2: invalid JSON at column \d+"),
        ("list.jsonl", '["not", "an", "object"]\n', r"list.jsonl line 1: expected a JSON object, found a list"),
        ("latin1.jsonl", b'{"text": "caf\xe9"}\n', r"latin1.jsonl line 1: not valid UTF-8 \(byte 14 of the line\)"),
        ("bad.json", '{"data": [1, 2', r"bad.json line 1: invalid JSON"),
        ("scalar.json", "42", r"scalar.json: expected a list of objects .* found a number"),
        ("items.json", '[{"text": "a"}, "b"]', r"items.json item 1: expected a JSON object, found a string"),
        ("ragged.csv", "prompt,completion\na,b\nc,d,e\n", r"ragged.csv line 3: 3 fields, but the header has 2"),
        ("fake.parquet", "this is not parquet", r"fake.parquet: not a readable parquet file"),
        ("notes.txt", "hello", r"notes.txt: unknown file type .txt"),
    ],
)
def test_bad_file_is_reported_where_it_is_bad(tmp_path: Path, name: str, content: str | bytes, expected: str) -> None:
    path = _write(tmp_path, name, content)

    with pytest.raises(InvalidData, match=expected):
        list(read_rows(path))


def test_csv_and_json_and_parquet_read_as_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_rows = list(read_rows(_write(tmp_path, "a.csv", "prompt,completion\nhi,there\n")))
    json_rows = list(read_rows(_write(tmp_path, "a.json", '{"data": [{"text": "x"}]}')))
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "a.parquet")
    parquet_rows = list(read_rows(tmp_path / "a.parquet"))

    assert csv_rows[0].values == {"prompt": "hi", "completion": "there"}
    assert json_rows[0].values == {"text": "x"}
    assert [r.where for r in parquet_rows] == ["a.parquet row 0", "a.parquet row 1"]


# Found by the dataset fuzzing (test_fuzz_datasets.py): each raised something other than
# InvalidData.
@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("deep.jsonl", '{"text": "a"}\n' + "[" * 100_000 + "\n", r"^deep.jsonl line 2: JSON nested too deep to parse$"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"^deep.json: JSON nested too deep to parse$"),
        ("digits.jsonl", '{"text": "a"}\n{"n": ' + "9" * 5000 + "}\n", r"^digits.jsonl line 2: a number of more"),
        ("digits.json", '[\n{"text": "a"},\n{"n": ' + "9" * 5000 + "}]", r"^digits.json line 3: a number of more than"),
    ],
)
def test_json_beyond_what_python_parses_is_reported_where_it_is(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    with pytest.raises(InvalidData, match=expected):
        list(read_rows(_write(tmp_path, name, content)))


def test_a_parquet_value_python_cannot_hold_is_reported_by_row_and_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    days = pa.array([0, 1, 3_000_000], pa.int32()).cast(pa.date32())  # the last is in the year 10183
    pq.write_table(pa.table({"text": ["a", "b", "c"], "written": days}), tmp_path / "dates.parquet")

    with pytest.raises(InvalidData, match=r"^dates.parquet row 2: column written cannot be read: "):
        list(read_rows(tmp_path / "dates.parquet"))


def test_a_long_document_in_a_csv_cell_is_read_as_from_jsonl(tmp_path: Path) -> None:
    text = "word " * 60_000  # 300 KB, over the csv module's default field limit of 128 KiB

    rows = list(read_rows(_write(tmp_path, "long.csv", f'text\n"{text}"\n')))

    assert rows[0].values == {"text": text}
