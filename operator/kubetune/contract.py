"""What the operator and the trainer agree on: where the pod's files are, which
environment variables carry runtime facts, and what the trainer's exit codes mean.

Both sides import this module, so a path or a code is written once.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from kubetune.api.facts import ModelFacts

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ExitCode(enum.IntEnum):
    """The trainer's exit status. The operator's podFailurePolicy reads these: invalid
    input, out-of-memory and a full disk are not retried (the next attempt would fail the
    same way, after redoing the steps since the newest checkpoint); anything else is, from
    the newest checkpoint."""

    OK = 0
    FAILED = 1
    INVALID_SPEC = 41
    INVALID_DATA = 42
    OUT_OF_MEMORY = 43
    INTERRUPTED = 44
    """Stopped by SIGTERM (preemption, eviction, suspend) after writing a checkpoint."""
    DISK_FULL = 45
    """A write found no space (ENOSPC) or an exhausted quota (EDQUOT): a person must make room."""

    @property
    def retryable(self) -> bool:
        return self in {ExitCode.FAILED, ExitCode.INTERRUPTED}


class Env(enum.StrEnum):
    """Environment variables the trainer reads, besides torchrun's own."""

    SPEC = "KUBETUNE_SPEC"
    """Path of the validated spec (JSON, camelCase), mounted from the job's ConfigMap."""
    JOB_NAME = "KUBETUNE_JOB_NAME"
    NAMESPACE = "KUBETUNE_NAMESPACE"
    VOLUMES = "KUBETUNE_VOLUMES"
    """Folder where each PersistentVolumeClaim of the spec is mounted, by claim name."""
    CONFIGMAPS = "KUBETUNE_CONFIGMAPS"
    """Folder where each ConfigMap of the spec is mounted, by name."""
    SECRETS = "KUBETUNE_SECRETS"
    """Folder where each Secret of the spec is mounted, by name (one file per key)."""
    WORK = "KUBETUNE_WORK"
    """Scratch space of the pod: downloads, tokenised data, local checkpoints."""
    OUTPUT = "KUBETUNE_OUTPUT"
    """Overrides the spec's output destination with a local folder (kubetune run --output)."""
    TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
    PROGRESS_PORT = "KUBETUNE_PROGRESS_PORT"
    MODEL_CACHE = "KUBETUNE_MODEL_CACHE"
    """Shared cache of downloaded models (the installation's model-cache claim); else in WORK."""
    OUTCOME_SHOWN_BY_CALLER = "KUBETUNE_OUTCOME_SHOWN_BY_CALLER"
    """Set by `kubetune run` for the processes it starts through torchrun: it prints the
    outcome from the summary itself, so the ranks do not log a failure too."""
    DATASET_ALLOWED_NETWORKS = "KUBETUNE_DATASET_ALLOWED_NETWORKS"
    """Networks (comma-separated CIDRs) dataset URLs may reach although they are private;
    the operator passes its own setting of the same name."""


DEFAULT_PATHS = {
    Env.SPEC: "/etc/kubetune/spec.json",
    Env.VOLUMES: "/mnt/kubetune/volumes",
    Env.CONFIGMAPS: "/mnt/kubetune/configmaps",
    Env.SECRETS: "/var/run/secrets/kubetune",
    Env.WORK: "/mnt/kubetune/work",
    Env.TERMINATION_LOG: "/dev/termination-log",
    Env.MODEL_CACHE: "/mnt/kubetune/model-cache",
}

DEFAULT_PROGRESS_PORT = 9090
TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes keeps at most this many bytes of a container's termination message."""
MODEL_FACTS_KEY = "modelFacts"
"""Where the preflight's summary carries what it read of a model that is not a preset
(kubetune.api.facts.ModelFacts, camelCase), for sizing `accelerators: auto`."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a network of one address). Raises ValueError
    naming the entry that is not one."""
    networks = []
    for entry in (item.strip() for item in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as error:
            raise ValueError(f"{entry!r} is not a network in CIDR notation ({error})") from None
    return tuple(networks)


HEADLINE_FIGURES = ("steps", "trainLoss", "evalLoss", "tokensPerSecond")
"""The figures of a finished run that the operator's status shows as its final progress: the
trainer keeps them in the termination message when the rest of its metrics do not fit."""


# ---------------------------------------------------------------------------- the run summary
# The trainer's last word, built once (by the trainer) and parsed once (by the operator): the
# full form is summary.json beside the outputs, the compact form the termination message.


class SummaryOutput(BaseModel):
    """Where a run's result landed."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    location: str | None = None
    """URI of the result: pvc://claim/path, s3://bucket/prefix, oci://reference, hf://repo."""
    formats: list[str] | None = None
    digest: str | None = None
    """Digest of a pushed artifact (OCI destinations)."""


class RunSummary(BaseModel):
    """What a trainer or preflight run reports. Every field is optional: a failure carries
    status, reason and message alone, a preflight its data statistics and model facts, and a
    termination message cut to its 4096 bytes may have lost anything but the outcome."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    status: str | None = None
    """Succeeded or Failed."""
    reason: str | None = None
    message: str | None = None
    output: SummaryOutput | None = None
    metrics: dict[str, Any] | None = None
    """The final figures by the trainer's name (steps, trainLoss, evalLoss, tokensPerSecond,
    the task's own, ...): numbers, but for precision and compiledLayers."""
    engine: dict[str, Any] | None = None
    """What the training engine did (kubetune_trainer.engine.engine_facts)."""
    data: dict[str, Any] | None = None
    """The data statistics (DataStats.as_dict, and the preflight's evalExamples and labels)."""
    model: str | None = None
    method: str | None = None
    task: str | None = None
    baseline: dict[str, Any] | None = None
    """The task's figures on the untrained model, where the run evaluated it."""
    history: list[dict[str, Any]] | None = None
    samples: list[dict[str, Any]] | None = None
    labels: list[str] | None = None
    confusion: dict[str, Any] | None = None
    """A classifier's confusion matrix at the final evaluation (labels, matrix)."""
    model_facts: ModelFacts | None = None
    """What a preflight read of a model that is not a preset, for sizing `accelerators: auto`."""

    @classmethod
    def failure(cls, reason: str, message: str) -> RunSummary:
        return cls(status="Failed", reason=reason, message=message)

    @property
    def reported(self) -> bool:
        """Whether the run reported anything at all (a crash leaves no summary)."""
        return bool(self.as_json())

    def as_json(self) -> dict[str, Any]:
        """The JSON form (camelCase, absent fields left out), as summary.json holds it."""
        return self.model_dump(mode="python", by_alias=True, exclude_none=True)

    def dumps(self) -> str:
        """summary.json's text."""
        return json.dumps(self.as_json(), indent=2) + "\n"

    @classmethod
    def parse(cls, text: str) -> RunSummary:
        """A summary from a termination message or summary.json, read leniently: text that is
        not a JSON object is no summary, and a field that does not validate is left out (the
        rest still says how the run ended)."""
        try:
            raw = json.loads(text)
        except ValueError:
            return cls()
        return cls.from_json(raw) if isinstance(raw, dict) else cls()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunSummary:
        fields = dict(raw)
        while True:
            try:
                return cls.model_validate(fields)
            except ValidationError as error:
                bad = {str(e["loc"][0]) for e in error.errors() if e["loc"]}
                if not bad & fields.keys():
                    return cls()
                fields = {k: v for k, v in fields.items() if k not in bad}


@dataclass(frozen=True)
class FinalFigures:
    """The final figures of a run, as the trainer's summary (the termination message) carries
    them under `metrics`: the steps done, the last training loss, the final evaluation loss,
    and every other number by the trainer's name (the task's own, such as evalAccuracy or
    perplexity, and tokensPerSecond)."""

    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: RunSummary) -> FinalFigures:
        """What the summary reports; figures that are absent or not finite numbers are left out
        (a summary cut to fit the 4096 bytes may have lost them all)."""
        if not summary.metrics:
            return cls()
        numbers = {
            str(name): float(value)
            for name, value in summary.metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }
        steps = numbers.get("steps")
        return cls(
            steps=int(steps) if steps is not None and steps >= 0 else None,
            train_loss=numbers.get("trainLoss"),
            eval_loss=numbers.get("evalLoss"),
            tokens_per_second=numbers.get("tokensPerSecond"),
            numbers=numbers,
        )


# ---------------------------------------------------------------------------- addresses a pod must not fetch from
# `kubetune validate`, the operator's admission and the trainer's fetch all judge a dataset
# URL's host with these functions, so the three gates refuse the same addresses.

METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
"""RFC 1918, carrier-grade NAT (RFC 6598) and IPv6 unique-local: where a cluster's pods,
services and nodes live."""
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
METADATA = "a cloud metadata address, refused even inside an allowed network"
HOW_TO_ALLOW = (
    f"a cluster administrator can allow a network with the operator setting {Env.DATASET_ALLOWED_NETWORKS.value} "
    "(chart value trainer.allowedDatasetNetworks); kubetune validate and kubetune run take --allow-network CIDR"
)


def address_refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a pod must not fetch from this address, or None when it may. An IPv6 address that
    carries an IPv4 one (mapped, compatible, 6to4, NAT64) is judged by the IPv4 address it reaches."""
    address = embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return METADATA
    if any(address in network for network in allowed if network.version == address.version):
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    private = next((n for n in PRIVATE_NETWORKS if n.version == address.version and address in n), None)
    if private is not None:
        return f"a private address (in {private})"
    if address.is_unspecified or address.is_multicast or address.is_reserved or not address.is_global:
        return "a special-purpose address"
    return None


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def literal_host_refusal(url: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why the trainer would refuse to fetch this URL, judged from its host alone when the host
    is an address (a name is judged when the trainer resolves it); None when it may be fetched."""
    host = urlsplit(url).hostname or ""
    address = host_address(host)
    reason = address_refusal(address, allowed) if address is not None else None
    if address is None or reason is None:
        return None
    reached = embedded_ipv4(address) or address
    spelled = f" ({reached})" if str(reached) != host else ""
    hint = "" if reason == METADATA else f"; {HOW_TO_ALLOW}"
    return f"the trainer refuses to fetch {url}: its host {host}{spelled} is {reason}{hint}"


def host_address(host: str) -> Address | None:
    """The address a URL's host names by itself, or None for a name that DNS must resolve.

    Besides the forms `ipaddress` reads, the resolver (inet_aton) reads an IPv4 address
    written in one to four parts, each decimal, octal (leading 0) or hexadecimal (0x):
    2852039166, 0xa9fea9fe and 0251.0376.0251.0376 all reach 169.254.169.254, so they are
    read here the same way."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return _inet_aton(host)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    numbers = [_c_number(part) for part in host.split(".")]
    if not 1 <= len(numbers) <= 4 or None in numbers:
        return None
    *leading, last = [n for n in numbers if n is not None]
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _c_number(text: str) -> int | None:
    """A number as C's strtoul reads it with base 0: 0x hex, leading-0 octal, else decimal."""
    if text[:2].lower() == "0x":
        digits, base, allowed = text[2:], 16, string.hexdigits
    elif text.startswith("0"):
        digits, base, allowed = text, 8, string.octdigits
    else:
        digits, base, allowed = text, 10, string.digits
    if not digits or any(c not in allowed for c in digits):
        return None
    return int(digits, base)
