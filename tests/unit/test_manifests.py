from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.manifests import ManifestError, iter_files, load_documents


def test_key_written_twice_is_refused_with_both_lines() -> None:
    text = "spec:\n  method:\n    type: lora\n  method:\n    type: full\n"

    with pytest.raises(ManifestError, match=r"job.yaml: line 4, column 3: .*'method' twice \(first on line 2\)"):
        load_documents(text, "job.yaml")


def test_broken_yaml_names_line_and_column() -> None:
    with pytest.raises(ManifestError, match=r"line 3, column \d+: not valid YAML"):
        load_documents("spec:\n  model: {preset: x\n  method: y\n", "job.yaml")


def test_documents_keep_their_order_and_skip_empty_ones() -> None:
    documents = load_documents("---\na: 1\n---\n---\nmetadata: {name: second}\n", "f.yaml")

    assert [d.body for d in documents] == [{"a": 1}, {"metadata": {"name": "second"}}]
    assert documents[1].label == "f.yaml#2 (second)"


def test_folders_are_searched_for_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text("b: 1\n")
    (tmp_path / "notes.txt").write_text("not yaml")

    assert [p.name for p in iter_files([tmp_path])] == ["a.yaml", "b.yml"]
