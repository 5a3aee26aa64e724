"""Generate the FineTuneJob CustomResourceDefinition from the API models.

The models are the source of truth; `crds/` holds this module's output and a test fails
when they drift. Pydantic's JSON Schema is turned into a Kubernetes structural schema:
references inlined, optional fields plain, defaults and titles dropped (the models
apply defaults; the descriptions say them), CEL rules kept.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from kubetune.api.resource import (
    CATEGORIES,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

Schema = dict[str, Any]

# Spec fields that may change once a job has started.
MUTABLE_AFTER_START = frozenset({"suspend"})

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Method", "type": "string", "jsonPath": ".status.method"},
    {"name": "Model", "type": "string", "jsonPath": ".status.model"},
    {
        "name": "Progress",
        "type": "number",
        "jsonPath": ".status.progress.percent",
        "description": "Percent of the planned optimizer steps done",
    },
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def structural_schema(model: type[Any]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _structural(raw, definitions)


def _structural(node: Schema, definitions: dict[str, Schema]) -> Schema:
    node = _inline(node, definitions)
    out: Schema = {}
    for key, value in node.items():
        if key in {"title", "default", "additionalProperties"} and not (
            key == "additionalProperties" and isinstance(value, dict)
        ):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, definitions) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"}:
            out[key] = _structural(value, definitions)
        elif key in {"exclusiveMinimum", "exclusiveMaximum"}:
            out[key.replace("exclusive", "").lower()] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "description":
            out[key] = " ".join(value.split())
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _readable_order(out)


_LEADING_KEYS = ("type", "description", "required")


def _readable_order(node: Schema) -> Schema:
    """type and description first, properties and rules last, so the YAML reads top-down."""
    trailing = ("properties", "items", "additionalProperties", "x-kubernetes-validations")
    head = {k: node[k] for k in _LEADING_KEYS if k in node}
    middle = {k: v for k, v in node.items() if k not in _LEADING_KEYS and k not in trailing}
    tail = {k: node[k] for k in trailing if k in node}
    return head | middle | tail


def _inline(node: Schema, definitions: dict[str, Schema]) -> Schema:
    """Resolve $ref and collapse anyOf: [X, null] (an optional field) into X."""
    node = dict(node)
    if "$ref" in node:
        target = definitions[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**copy.deepcopy(target), **node}
    if "anyOf" in node:
        members = [m for m in node.pop("anyOf") if m.get("type") != "null"]
        if len(members) == 1:
            node = {**_inline(members[0], definitions), **node}
        elif _is_int_or_string(members):
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express a union as a structural schema: {members}")
    return node


def _is_int_or_string(members: list[Schema]) -> bool:
    kinds = {m.get("type") or ("string" if "const" in m or "enum" in m else None) for m in members}
    return kinds == {"integer", "string"}


def immutability_rules(spec_schema: Schema) -> list[dict[str, str]]:
    """Root-level CEL rules: once status.startTime is set, each spec field but suspend stays.

    They sit at the root, where both spec and status are visible, and compare presence as
    well as value, so adding or removing an optional field is caught too.
    """
    started = "has(oldSelf.status) && has(oldSelf.status.startTime)"
    rules = []
    for name in spec_schema["properties"]:
        if name in MUTABLE_AFTER_START:
            continue
        new, old = f"self.spec.{name}", f"oldSelf.spec.{name}"
        same = f"has({new}) == has({old}) && (!has({new}) || {new} == {old})"
        rules.append(
            {
                "rule": f"!({started}) || ({same})",
                "message": f"spec.{name} cannot change once the job has started (only spec.suspend can); "
                "create a new FineTuneJob instead",
                "fieldPath": f".spec.{name}",
                "reason": "FieldValueForbidden",
            }
        )
    return rules


def build_crd() -> dict[str, Any]:
    spec = structural_schema(FineTuneJobSpec)
    status = structural_schema(FineTuneJobStatus)
    root: Schema = {
        "type": "object",
        "description": "A fine-tuning run of a language model: model, dataset, method, compute "
        "and destination. The operator trains it and keeps status true.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
            "kind": {"type": "string", "description": "FineTuneJob"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": immutability_rules(spec),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


CRD_FILE = f"crds/{GROUP}_{PLURAL}.yaml"


def render_crd() -> str:
    header = "# Generated from the API models by `kubetune crd` (make crds). Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100, allow_unicode=True)
