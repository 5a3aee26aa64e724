"""Deterministic names of a FineTuneJob's children, so a redelivered event or a restarted
operator finds what it made instead of making it twice. Every name fits the limits that
apply to it (a pod's host name is `<job>-<index>`, a label value at most 63 characters)."""

from __future__ import annotations

import hashlib

DNS_LABEL = 63
# Leaves room for "-<completion index>" in the host names of up to 9999 pods.
JOB_NAME_LIMIT = DNS_LABEL - 5


def fit(base: str, suffix: str, limit: int = DNS_LABEL) -> str:
    """`base + suffix`, with base shortened and made unique by a hash when too long."""
    name = f"{base}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def _letter_first(name: str) -> str:
    # Service names are DNS-1035 labels: they must start with a letter.
    return name if name[:1].isalpha() else f"ftj-{name}"


def config_map_name(job: str) -> str:
    return fit(job, "-spec", 253)


def service_name(job: str) -> str:
    return fit(_letter_first(job), "")


def attempt_job_name(job: str, attempt: int) -> str:
    return fit(job, f"-a{attempt}", JOB_NAME_LIMIT)


def preflight_job_name(job: str) -> str:
    return fit(job, "-preflight", JOB_NAME_LIMIT)


def rank0_host(job: str, attempt: int) -> str:
    """Rank 0's stable DNS name: pod 0 of the attempt's Indexed Job, under the Service."""
    return f"{attempt_job_name(job, attempt)}-0.{service_name(job)}"


def label_value(job: str) -> str:
    """The FineTuneJob's name as a label value (at most 63 characters; names may have 253)."""
    return fit(job, "")
