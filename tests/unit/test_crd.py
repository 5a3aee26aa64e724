from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.crd import CRD_FILE, MUTABLE_AFTER_START, build_crd, render_crd

Schema = dict[str, Any]


def _root() -> Schema:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _nodes(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models(repo: Path) -> None:
    committed = (repo / CRD_FILE).read_text()

    assert committed == render_crd(), "crds/ is stale: run `make crds`"


def test_schema_is_structural() -> None:
    for path, node in _nodes(_root()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "default", "nullable", "title"} & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_every_spec_and_status_field_is_described() -> None:
    root = _root()
    for top in ("spec", "status"):
        for path, node in _nodes(root["properties"][top], top):
            if path.endswith(("[]", "{}")):
                continue  # members of a list or map are described by the field that holds them
            assert node.get("description"), f"{path} has no description for kubectl explain"


def test_status_keeps_kopf_state_open() -> None:
    kopf = _root()["properties"]["status"]["properties"]["kopf"]

    assert kopf["x-kubernetes-preserve-unknown-fields"] is True


def test_crd_names_and_subresources() -> None:
    crd = build_crd()
    version = crd["spec"]["versions"][0]

    assert crd["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}


def test_printer_columns_point_at_fields_of_the_schema() -> None:
    version = build_crd()["spec"]["versions"][0]
    root = _root()
    names = [c["name"] for c in version["additionalPrinterColumns"]]

    assert names[:5] == ["Phase", "Method", "Model", "Progress", "Loss"]
    for column in version["additionalPrinterColumns"]:
        node = root
        *parts, leaf = column["jsonPath"].lstrip(".").split(".")
        if parts == ["metadata"]:
            continue
        for part in parts:
            node = node["properties"][part]
        assert leaf in node["properties"], column["jsonPath"]


def test_immutability_rules_cover_every_spec_field_but_suspend() -> None:
    root = _root()
    ruled = {rule["fieldPath"].removeprefix(".spec.") for rule in root["x-kubernetes-validations"]}

    assert ruled == set(root["properties"]["spec"]["properties"]) - MUTABLE_AFTER_START
    assert "suspend" in root["properties"]["spec"]["properties"]


@pytest.mark.parametrize("version", ["1.33.0", "1.37.0"])
def test_crd_passes_kubernetes_schema_validation(repo: Path, version: str) -> None:
    # What `kubernetes-validate --strict` does, in this process: a Python child would spend
    # longer importing than validating.
    kubernetes_validate.validate(yaml.safe_load((repo / CRD_FILE).read_text()), version, strict=True)


def test_rendered_crd_is_one_yaml_document() -> None:
    assert len(list(yaml.safe_load_all(render_crd()))) == 1


def test_every_variable_length_spec_field_is_bounded() -> None:
    """The API server estimates the cost of CEL rules from these bounds and refuses a CRD
    whose rules could exceed its budget; an unbounded string, list or map in the spec
    makes the immutability rules' estimated cost unbounded."""
    bound_of = {"string": "maxLength", "array": "maxItems", "object": "maxProperties"}
    for path, node in _nodes(_root()["properties"]["spec"], "spec"):
        kind = node.get("type")
        if kind == "object" and ("properties" in node or node.get("x-kubernetes-preserve-unknown-fields")):
            continue
        if kind in bound_of and "enum" not in node:
            assert bound_of[kind] in node, f"{path} has no {bound_of[kind]}"
