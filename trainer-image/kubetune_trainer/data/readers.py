"""Read rows from dataset files (jsonl, json, csv, parquet), each row labelled with its place.

Every problem is raised as InvalidData naming the file and the line or row, before any
model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import InvalidData

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_LINE_BYTES = 64 * 1024 * 1024
PARQUET_BATCH = 1024


@dataclass(frozen=True)
class Row:
    """One example as read, with where it came from ("train.jsonl line 12")."""

    values: dict[str, Any]
    where: str


def read_rows(path: Path) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json(path)
    elif suffix == ".csv":
        yield from _csv(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        raise InvalidData(f"{path.name}: unknown file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}")


def _jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path.name} line {number}"
            if len(raw) > MAX_LINE_BYTES:
                raise InvalidData(f"{where}: line is {len(raw)} bytes, over the limit of {MAX_LINE_BYTES}")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidData(f"{where}: not valid UTF-8 (byte {error.start + 1} of the line)") from None
            if not line.strip():
                continue
            yield Row(_object(_parse(line, path.name, number), where), where)


def _json(path: Path) -> Iterator[Row]:
    value = _parse(_text(path, "utf-8"), path.name)
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise InvalidData(f'{path.name}: expected a list of objects (or {{"data": [...]}}), found {_kind(value)}')
    for index, item in enumerate(value):
        where = f"{path.name} item {index}"
        yield Row(_object(item, where), where)


def _csv(path: Path) -> Iterator[Row]:
    # The csv module refuses fields over 128 KiB by default; a long document is a field.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(io.StringIO(_text(path, "utf-8-sig"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        raise InvalidData(f"{path.name} line 1: {error}") from None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise InvalidData(f"{path.name} line {reader.line_num}: {error}") from None
        where = f"{path.name} line {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise InvalidData(f"{where}: {len(cells)} fields, but the header has {len(header)}")
        yield Row(dict(zip(header, cells, strict=True)), where)


def _parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq  # the parquet engine is only needed for parquet files

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise InvalidData(f"{path.name}: not a readable parquet file ({error})") from None
    index = 0
    for batch in table.to_batches(max_chunksize=PARQUET_BATCH):
        try:
            rows = batch.to_pylist()
        except (ValueError, OverflowError) as error:  # a value Python cannot hold, e.g. a date past 9999
            raise _unconvertible(path, batch, index, error) from None
        for values in rows:
            yield Row(values, f"{path.name} row {index}")
            index += 1


def _unconvertible(path: Path, batch: Any, first: int, error: Exception) -> InvalidData:
    """Which row and column of a batch cannot become Python values."""
    for offset in range(batch.num_rows):
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            try:
                column[offset].as_py()
            except (ValueError, OverflowError) as cell:
                return InvalidData(f"{path.name} row {first + offset}: column {name} cannot be read: {cell}")
    return InvalidData(f"{path.name} rows {first}-{first + batch.num_rows - 1}: cannot be read: {error}")


def _text(path: Path, encoding: str) -> str:
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise InvalidData(f"{path.name}: not valid UTF-8 (byte {error.start + 1})") from None


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidData(f"{where}: expected a JSON object, found {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else "null"
    )


def _parse(text: str, name: str, line: int | None = None) -> Any:
    """JSON text of a file, or of one line of it, as Python values."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{name} line {line or error.lineno}"
        raise InvalidData(f"{where}: invalid JSON at column {error.colno}: {error.msg}") from None
    except ValueError:  # an integer of more digits than Python converts
        limit = sys.get_int_max_str_digits()
        longest = rf"\d{{{limit + 1}}}"
        where = f"{name} line {line or _line_of(text, longest)}"
        raise InvalidData(f"{where}: a number of more than {limit} digits") from None
    except RecursionError:
        where = f"{name} line {line}" if line else name
        raise InvalidData(f"{where}: JSON nested too deep to parse") from None


def _line_of(text: str, pattern: str) -> int:
    """The line where `pattern` first matches in `text` (the first line when it does not)."""
    found = re.search(pattern, text)
    return text.count("\n", 0, found.start()) + 1 if found else 1
