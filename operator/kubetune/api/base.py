"""Shared building blocks of the FineTuneJob API: the base model and small reference types."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

# A Kubernetes object passed through untouched (tolerations, affinity, volumes, ...).
# The CRD keeps it open, and the API server validates it where it lands in a Pod.
KubeObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

# A Kubernetes quantity such as "16Gi", "500m" or 4.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
Quantity = Annotated[
    int | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)],
    WithJsonSchema({"x-kubernetes-int-or-string": True}),
]

# What Kubernetes takes as the name of a claim, ConfigMap, Secret or account (RFC 1123
# subdomain). The trainer joins these names onto its mount folders, so "..", "/" and the
# like must not pass where no API server checks them first (kubetune run).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"


def _kubernetes_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a Kubernetes object name ({NAME_RULE})")
    return name


Name = Annotated[
    str,
    Field(min_length=1, max_length=253),
    AfterValidator(_kubernetes_name),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253, "pattern": NAME_PATTERN}),
]
"""A Kubernetes object name."""

# What Kubernetes takes as a key of a ConfigMap or Secret: each key is a file in the
# mounted folder, so ".", ".." and names starting with ".." are not keys.
KEY_PATTERN = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
KEY_RULE = "letters, digits, '-', '_' and '.', not '.' or '..' nor starting with '..'"


def _key(key: str) -> str:
    if not re.fullmatch(KEY_PATTERN, key):
        raise ValueError(f"{key!r} is not a ConfigMap or Secret key ({KEY_RULE})")
    return key


Key = Annotated[
    str,
    Field(min_length=1, max_length=253),
    AfterValidator(_key),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 253, "pattern": KEY_PATTERN}),
]
"""A key of a ConfigMap or Secret (a file name where it is mounted)."""

# A path is joined onto the folder its volume (or bucket prefix) is mounted at, so a ".."
# segment would reach outside it. The same rule, in CEL for the API server and in Python
# for the models; a leading "/" is the volume's root, not the pod's.
ESCAPE_RULE = "!(self == '..' || self.startsWith('../') || self.endsWith('/..') || self.contains('/../'))"
ESCAPE_MESSAGE = "must not contain a '..' segment: the path stays inside its volume or bucket"


def _no_parent_segment(path: str) -> str:
    if ".." in path.split("/"):
        raise ValueError(f"{path!r} {ESCAPE_MESSAGE}")
    return path


def _no_escape_schema(bounds: dict[str, Any]) -> WithJsonSchema:
    rule = {"rule": ESCAPE_RULE, "message": ESCAPE_MESSAGE}
    return WithJsonSchema({"type": "string", **bounds, "x-kubernetes-validations": [rule]})


Path = Annotated[
    str,
    Field(min_length=1, max_length=4096),
    AfterValidator(_no_parent_segment),
    _no_escape_schema({"minLength": 1, "maxLength": 4096}),
]
"""A path inside a volume."""

S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
S3Uri = Annotated[
    str,
    Field(pattern=S3_URI_PATTERN, max_length=2048),
    AfterValidator(_no_parent_segment),
    _no_escape_schema({"pattern": S3_URI_PATTERN, "maxLength": 2048}),
]
"""s3://bucket/prefix: the prefix is laid out as folders when it is downloaded."""


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused.

    Field docstrings become the descriptions that `kubectl explain` shows.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )


def _one_of_cel_rule(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    fields = [_wire_name(name) for name in cls.one_of]  # type: ignore[attr-defined]
    count = " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in fields)
    schema["x-kubernetes-validations"] = [
        {"rule": f"{count} == 1", "message": f"set exactly one of: {', '.join(fields)}"}
    ]


class OneOf(ApiModel):
    """A model of which exactly one field must be set (a source or a destination).

    The rule is written once, here: the same tuple feeds the pydantic validator and
    the CEL rule in the generated CRD.
    """

    model_config = ApiModel.model_config | ConfigDict(json_schema_extra=_one_of_cel_rule)

    one_of: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _exactly_one(self) -> OneOf:
        chosen = self.chosen_fields()
        if len(chosen) != 1:
            names = ", ".join(_wire_name(f) for f in self.one_of)
            found = ", ".join(_wire_name(f) for f in chosen) or "none"
            raise ValueError(f"set exactly one of: {names} (found: {found})")
        return self

    def chosen_fields(self) -> list[str]:
        return [name for name in self.one_of if getattr(self, name) is not None]

    @property
    def kind(self) -> str:
        """Wire name of the field that is set, e.g. "huggingFace"."""
        return _wire_name(self.chosen_fields()[0])


def _wire_name(field: str) -> str:
    return to_camel(field)


class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace. The trainer reads it from a mounted file."""

    name: Name
    """Name of the Secret."""
    key: Key = "token"
    """Key inside the Secret."""


class SecretRef(ApiModel):
    """A whole Secret in the job's namespace, mounted as files."""

    name: Name
    """Name of the Secret."""


class PvcLocation(ApiModel):
    """A path on a PersistentVolumeClaim in the job's namespace."""

    claim_name: Name
    """Name of the PersistentVolumeClaim."""
    path: Path = "/"
    """Path inside the volume."""
    read_write_many: bool = False
    """Set when the claim's access mode is ReadWriteMany. Jobs on several nodes write
    checkpoints and outputs only to shared storage, so they need this (or S3)."""


class S3Location(ApiModel):
    """An object-store prefix reached over the S3 protocol (AWS, MinIO, Ceph, GCS interop)."""

    uri: S3Uri
    """URI of the form s3://bucket/prefix."""
    endpoint: Annotated[str, Field(pattern=r"^https?://", max_length=2048)] | None = None
    """Endpoint URL for S3-compatible stores; empty means AWS."""
    region: Annotated[str, Field(max_length=64)] | None = None
    """Region of the bucket."""
    credentials_secret: SecretRef | None = None
    """Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; empty means the
    pod's own identity (IRSA, workload identity)."""


class HubRepoRef(ApiModel):
    """A repository on the Hugging Face Hub."""

    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.\-]*/[\w\-][\w.\-]*$", max_length=256)]
    """Repository id, owner/name."""
    revision: Annotated[str, Field(min_length=1, max_length=256)] = "main"
    """Branch, tag or commit."""


class HuggingFaceRepo(HubRepoRef):
    """A repository on the Hugging Face Hub, with the token that reaches it."""

    token_secret: SecretKeyRef | None = None
    """Secret key holding a Hub token, for gated or private repositories."""


class OciReference(ApiModel):
    """An artifact in an OCI registry."""

    reference: Annotated[str, Field(pattern=r"^[a-z0-9][\w.\-:/]*[:@][\w.\-:]+$", max_length=1024)]
    """Image reference with a tag or digest, e.g. registry.example.com/adapters/phi3:v1."""
    secret: SecretRef | None = None
    """Credentials for the registry: a kubernetes.io/dockerconfigjson Secret (the entry for
    this registry's host), or a kubernetes.io/basic-auth Secret (keys username, password)."""
