"""Check an object against the generated CRD offline, as the API server would.

Two parts: the structural schema (types, enums, bounds, unknown fields refused as by
`kubectl apply` with strict field validation) through JSON Schema, and the CRD's CEL
rules through cel-python, transition rules included when an old object is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import celpy
import jsonschema
from celpy.adapter import json_to_cel

from kubetune.api.problems import Problem, field_path
from kubetune.crd import Schema, build_crd


@cache
def crd_root_schema() -> Schema:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def to_json_schema(node: Schema) -> Schema:
    """An OpenAPI v3 structural schema as JSON Schema (draft 2020-12)."""
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in {"exclusiveMinimum", "exclusiveMaximum"}:
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value:
                out[key] = node[bound]
        elif key in {"minimum", "maximum"}:
            if not node.get(f"exclusive{key.capitalize()}"):
                out[key] = value
        elif not key.startswith("x-kubernetes-"):
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(to_json_schema(crd_root_schema()))


def schema_problems(obj: Any) -> list[Problem]:
    found: set[Problem] = set()
    for error in _validator().iter_errors(obj):
        found.update(_located(error))
    return sorted(found)


def _located(error: jsonschema.ValidationError) -> Iterator[Problem]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        for key in error.instance:
            if key not in known:
                yield Problem(field_path([*path, key]), "unknown field (check its spelling and indentation)")
    elif error.validator == "required":
        for key in error.validator_value:
            if key not in error.instance:
                yield Problem(field_path([*path, key]), "required field is missing")
    else:
        yield Problem(field_path(path), _plain(error))


_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}


def _plain(error: jsonschema.ValidationError) -> str:
    """The schema's complaint in the words a manifest's author uses."""
    bound, found = error.validator_value, error.instance
    match error.validator:
        case "type":
            return f"must be {_type_words(bound)}, found {_JSON_TYPES.get(type(found), 'null')}"
        case "enum":
            return f"must be one of: {', '.join(map(str, bound))} (found {found!r})"
        case "minimum":
            return f"must be at least {bound} (found {found})"
        case "maximum":
            return f"must be at most {bound} (found {found})"
        case "exclusiveMinimum":
            return f"must be greater than {bound} (found {found})"
        case "exclusiveMaximum":
            return f"must be less than {bound} (found {found})"
        case "minLength" | "maxLength":
            least = error.validator == "minLength"
            return f"must be at {'least' if least else 'most'} {bound} characters long"
        case "minItems" | "maxItems":
            least = error.validator == "minItems"
            return f"must have at {'least' if least else 'most'} {bound} item{'s' if bound != 1 else ''}"
        case "pattern":
            return f"{found!r} does not match the pattern {bound}"
    return str(error.message)


def _type_words(expected: str | list[str]) -> str:
    names = [expected] if isinstance(expected, str) else expected
    return " or ".join(f"an {n}" if n[0] in "aeiou" else f"a {n}" for n in names)


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_problems(obj: Any, old: Any = None) -> list[Problem]:
    """Problems from the CRD's CEL rules. Transition rules (those reading oldSelf) run only
    where an old value exists, as on the API server."""
    return sorted(_walk_rules(crd_root_schema(), obj, old, []))


def _walk_rules(schema: Schema, value: Any, old: Any, path: list[str | int]) -> Iterator[Problem]:
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": json_to_cel(value)}
        if transition:
            activation["oldSelf"] = json_to_cel(old)
        result = _program(rule["rule"]).evaluate(activation)
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            where = path + [p for p in rule.get("fieldPath", "").split(".") if p]
            yield Problem(field_path(where), rule["message"])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name) if isinstance(old, dict) else None
                yield from _walk_rules(sub, value[name], old_sub, [*path, name])
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _walk_rules(schema["items"], item, None, [*path, index])


def crd_problems(obj: Any, old: Any = None) -> list[Problem]:
    """What the API server would refuse: schema problems first; CEL rules once the shape is right."""
    obj = without_nulls(obj, crd_root_schema())
    old = without_nulls(old, crd_root_schema()) if old is not None else None
    return schema_problems(obj) or cel_problems(obj, old)


def without_nulls(obj: Any, schema: Schema | None) -> Any:
    """The object as the API server validates it: a null in a field that is not nullable (and
    has no default) is dropped first, as if it had not been written (`field: ~` in YAML)."""
    if not isinstance(obj, dict) or schema is None:
        return obj
    properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
    kept = {}
    for key, value in obj.items():
        field_schema = properties.get(key, extra if isinstance(extra, dict) else None)
        if value is None and field_schema is not None and not field_schema.get("nullable"):
            continue
        if isinstance(value, list) and field_schema is not None:
            value = [without_nulls(item, field_schema.get("items")) for item in value]
        kept[key] = without_nulls(value, field_schema)
    return kept
