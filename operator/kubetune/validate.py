"""Validate FineTuneJob manifests offline, the way the cluster would: the CRD schema and
its CEL rules (the API server's part), then the models' cross-field rules (the operator's)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api import API_VERSION, KIND, FineTuneJobSpec, InvalidSpec, parse_finetunejob
from kubetune.api.base import KEY_PATTERN, KEY_RULE, NAME_PATTERN, NAME_RULE
from kubetune.api.problems import Problem
from kubetune.api.spec import DatasetSource
from kubetune.contract import Network, literal_host_refusal
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


def validate_document(document: Document, allowed_networks: Sequence[Network] | None = ()) -> Verdict:
    """The verdict of the API server and the operator on one document. `allowed_networks` are
    the private networks dataset URLs may reach (the installation's setting); None leaves
    dataset URLs unjudged, for a caller that does not know the setting."""
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
        job = parse_finetunejob(body)
    except InvalidSpec as error:
        return Verdict(document, error.problems)
    if allowed_networks is None:
        return Verdict(document, [])
    return Verdict(document, dataset_url_problems(job.spec, allowed_networks))


def dataset_url_problems(spec: FineTuneJobSpec, allowed_networks: Sequence[Network] = ()) -> list[Problem]:
    """Dataset URLs whose host is an address the trainer refuses to fetch from (loopback,
    private, link-local, cloud metadata), found while the manifest is still in front of its
    author. The trainer checks again when it fetches: a name can resolve anywhere."""
    sources: list[tuple[str, DatasetSource]] = [("spec.dataset", spec.dataset)]
    if spec.dataset.evaluation is not None and spec.dataset.evaluation.source is not None:
        sources.append(("spec.dataset.evaluation.source", spec.dataset.evaluation.source))
    return [
        Problem(f"{where}.urls[{index}].url", reason)
        for where, source in sources
        for index, item in enumerate(source.urls or [])
        if (reason := literal_host_refusal(item.url, allowed_networks)) is not None
    ]


def config_map_problems(body: dict[str, Any]) -> list[Problem]:
    """What the API server would refuse in a ConfigMap's name and keys (kubetune run lays its
    keys out as files, one folder per ConfigMap, where no API server has checked them)."""
    name = (body.get("metadata") or {}).get("name")
    problems = []
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        problems.append(Problem("metadata.name", f"{name!r} is not a Kubernetes object name ({NAME_RULE})"))
    for key in body.get("data") or {}:
        if not isinstance(key, str) or not re.fullmatch(KEY_PATTERN, key):
            problems.append(Problem(f"data[{key!r}]", f"{key!r} is not a ConfigMap key ({KEY_RULE})"))
    return problems
