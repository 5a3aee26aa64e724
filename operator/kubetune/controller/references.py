"""Everything in the job's namespace that a spec points at: claims, ConfigMaps, Secrets.
The pod mounts each one; the operator can check that each exists before creating pods."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kubetune.api.base import PvcLocation, S3Location
from kubetune.api.spec import DatasetSource, FineTuneJobSpec


@dataclass(frozen=True)
class References:
    claims: tuple[str, ...]
    config_maps: tuple[str, ...]
    secrets: tuple[str, ...]


def references(spec: FineTuneJobSpec) -> References:
    sources = [spec.dataset] + (
        [spec.dataset.evaluation.source] if spec.dataset.evaluation and spec.dataset.evaluation.source else []
    )
    claims = [p.claim_name for p in _claims(spec, sources)]
    config_maps = [s.config_map.name for s in sources if s.config_map is not None]
    return References(
        tuple(dict.fromkeys(claims)), tuple(dict.fromkeys(config_maps)), tuple(dict.fromkeys(_secrets(spec, sources)))
    )


def _claims(spec: FineTuneJobSpec, sources: list[DatasetSource]) -> Iterator[PvcLocation]:
    candidates = [spec.model.pvc, *(s.pvc for s in sources), spec.output.pvc]
    if spec.checkpoint.location is not None:
        candidates.append(spec.checkpoint.location.pvc)
    if spec.training.warm_start is not None:
        candidates.append(spec.training.warm_start.pvc)
    reference = spec.preferences.reference
    if reference is not None:
        candidates.append(reference.pvc)
    yield from (c for c in candidates if c is not None)


def _secrets(spec: FineTuneJobSpec, sources: list[DatasetSource]) -> Iterator[str]:
    for model in (spec.model, spec.preferences.reference):
        if model is not None and model.hub_token_secret is not None:
            yield model.hub_token_secret.name
    for source in sources:
        if source.hugging_face is not None and source.hugging_face.token_secret is not None:
            yield source.hugging_face.token_secret.name
    buckets: list[S3Location | None] = [*(s.s3 for s in sources), spec.output.s3]
    if spec.checkpoint.location is not None:
        buckets.append(spec.checkpoint.location.s3)
    warm = spec.training.warm_start
    if warm is not None:
        buckets.append(warm.s3)
        if warm.oci is not None and warm.oci.secret is not None:
            yield warm.oci.secret.name
        if warm.hugging_face is not None and warm.hugging_face.token_secret is not None:
            yield warm.hugging_face.token_secret.name
    yield from (b.credentials_secret.name for b in buckets if b is not None and b.credentials_secret is not None)
    if spec.output.oci is not None and spec.output.oci.secret is not None:
        yield spec.output.oci.secret.name
    if spec.output.hugging_face is not None and spec.output.hugging_face.token_secret is not None:
        yield spec.output.hugging_face.token_secret.name
    tracking = spec.training.tracking
    if tracking is not None and tracking.credentials_secret is not None:
        yield tracking.credentials_secret.name
