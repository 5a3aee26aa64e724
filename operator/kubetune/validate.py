"""Validate FineTuneJob manifests offline, the way the cluster would: the CRD schema and
its CEL rules (the API server's part), then the models' cross-field rules (the operator's)."""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api import API_VERSION, KIND, InvalidSpec, parse_finetunejob
from kubetune.api.problems import Problem
from kubetune.crdcheck import crd_problems
from kubetune.manifests import Document


@dataclass(frozen=True)
class Verdict:
    document: Document
    problems: list[Problem]
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_document(document: Document) -> Verdict:
    body = document.body
    if not isinstance(body, dict):
        return Verdict(document, [Problem("", f"expected a mapping, found {type(body).__name__}")])
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind != KIND:
        return Verdict(document, [], skipped=f"kind {kind or '(none)'} is not a {KIND}")
    if api_version != API_VERSION:
        return Verdict(document, [Problem("apiVersion", f"expected {API_VERSION}, found {api_version!r}")])
    problems = crd_problems(body)
    if problems:
        return Verdict(document, problems)
    try:
        parse_finetunejob(body)
    except InvalidSpec as error:
        return Verdict(document, error.problems)
    return Verdict(document, [])
