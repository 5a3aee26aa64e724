"""Read rows from dataset files (jsonl, json, csv, parquet), each row labelled with its place.

Every problem is raised as InvalidData naming the file and the line or row, before any
model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import InvalidData

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_LINE_BYTES = 64 * 1024 * 1024


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
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise InvalidData(f"{where}: invalid JSON at column {error.colno}: {error.msg}") from None
            yield Row(_object(value, where), where)


def _json(path: Path) -> Iterator[Row]:
    try:
        value = json.loads(_text(path, "utf-8"))
    except json.JSONDecodeError as error:
        raise InvalidData(
            f"{path.name} line {error.lineno}: invalid JSON at column {error.colno}: {error.msg}"
        ) from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise InvalidData(f'{path.name}: expected a list of objects (or {{"data": [...]}}), found {_kind(value)}')
    for index, item in enumerate(value):
        where = f"{path.name} item {index}"
        yield Row(_object(item, where), where)


def _csv(path: Path) -> Iterator[Row]:
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
    for index, values in enumerate(table.to_pylist()):
        yield Row(values, f"{path.name} row {index}")


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
