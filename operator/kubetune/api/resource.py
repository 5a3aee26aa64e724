"""The FineTuneJob resource as a whole, and parsing a manifest into it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from kubetune.api.base import ApiModel
from kubetune.api.problems import InvalidSpec, Problem, problems_from_validation_error
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.status import FineTuneJobStatus

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)


class ObjectMeta(ApiModel):
    """The part of Kubernetes object metadata that kubetune reads; the rest is kept as is."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=253)
    namespace: str | None = None
    generate_name: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class FineTuneJob(ApiModel):
    """A fine-tuning run of a language model."""

    api_version: Literal["kubetune.io/v1alpha1"] = "kubetune.io/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = ObjectMeta()
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


def parse_finetunejob(body: Any, source: str = "") -> FineTuneJob:
    """Validate a manifest (a parsed YAML or JSON object) into a FineTuneJob.

    Raises InvalidSpec listing every problem by field path.
    """
    if not isinstance(body, dict):
        found = type(body).__name__
        raise InvalidSpec([Problem("", f"expected a FineTuneJob object, found {found}")], source)
    try:
        return FineTuneJob.model_validate(body)
    except ValidationError as error:
        raise InvalidSpec(problems_from_validation_error(error), source) from None


def dump_spec(spec: FineTuneJobSpec) -> str:
    """The spec as the trainer reads it: JSON with the wire (camelCase) names, holding the
    fields the author set (the same models fill in the same defaults on the other side)."""
    return spec.model_dump_json(by_alias=True, exclude_unset=True, indent=2)
