"""Reading manifests: multi-document YAML, refused when a key is written twice.

PyYAML keeps the last of two equal keys silently; in a manifest that loses a setting
without a word, so the loader here refuses it and says where.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A file that is not readable YAML, with the place of the first problem."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key]
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found key {key!r} twice (first on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with where it came from."""

    body: Any
    source: str
    index: int

    @property
    def label(self) -> str:
        name = self.body.get("metadata", {}).get("name") if isinstance(self.body, dict) else None
        where = f"{self.source}#{self.index + 1}" if self.index else self.source
        return f"{where} ({name})" if name else where


def load_documents(text: str, source: str = "<stdin>") -> list[Document]:
    """Every non-empty document of a YAML text. Raises ManifestError with line and column."""
    try:
        bodies = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: {_describe(error)}") from None
    return [Document(body, source, i) for i, body in enumerate(b for b in bodies if b is not None)]


def read_documents(path: Path) -> list[Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read: {error}") from None
    return load_documents(text, str(path))


def _describe(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"not valid YAML: {problem}"
    return f"line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Files named, and the YAML files inside folders named."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"})
        else:
            yield path
