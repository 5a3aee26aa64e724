"""What the operator and the trainer agree on: where the pod's files are, which
environment variables carry runtime facts (one model, `PodEnvironment`, rendered by the
operator and `kubetune run`, read by the trainer), what the trainer's exit codes mean, and
the messages between them: the run summary (`RunSummary` and its parts: `Figures`,
`EngineFacts`, `DataSummary`, `HistoryRecord`, `SampleAnswers`, `Confusion`) and the
progress report (`Progress`).

Both sides import this module, so a path, a code or a field is written once.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubetune.api.facts import ModelFacts
from kubetune.api.status import Progress as Progress  # the one model of a progress report

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
    NODES = "KUBETUNE_NODES"
    """Pods of the training Job (torchrun's --nnodes)."""
    PROCS_PER_NODE = "KUBETUNE_PROCS_PER_NODE"
    MASTER_ADDR = "KUBETUNE_MASTER_ADDR"
    """Rank 0's pod, by its name under the job's headless Service."""
    MASTER_PORT = "KUBETUNE_MASTER_PORT"
    RESOLVE_TIMEOUT = "KUBETUNE_RESOLVE_TIMEOUT"
    """Seconds a pod waits for rank 0's name to resolve before it gives up."""


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


# ---------------------------------------------------------------------------- the run summary
# The trainer's last word, built once (by the trainer) and parsed once (by the operator): the
# full form is summary.json beside the outputs, the compact form the termination message.


class _Message(BaseModel):
    """A part of a message between the trainer and the operator: camelCase JSON, frozen."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    def as_json(self) -> dict[str, Any]:
        """The JSON form (camelCase, absent fields left out)."""
        return self.model_dump(mode="python", by_alias=True, exclude_none=True)


Number = int | float
"""A figure as the trainer wrote it: an int stays an int in the JSON (a step, a count)."""


class SummaryOutput(_Message):
    """Where a run's result landed."""

    location: str | None = None
    """URI of the result: pvc://claim/path, s3://bucket/prefix, oci://reference, hf://repo."""
    formats: list[str] | None = None
    digest: str | None = None
    """Digest of a pushed artifact (OCI destinations)."""


class Figures(_Message):
    """A run's figures by the trainer's name: the final ones (`RunSummary.metrics`) or the
    untrained model's evaluation (`RunSummary.baseline`, the evaluation figures alone).

    The figures every run reports are fields. Each task adds its own evaluation figures
    (evalAccuracy, evalMacroF1, evalBleu, evalEntityF1, ...; `Task.figures` names them), and
    they are open-ended, so they are the model's extra fields: numbers, checked as such, kept
    flat beside the others in the JSON (`task_figures` reads them), because the job's status,
    the report and the card show every figure under the one name. A figure every task
    reports becomes a field here; a task's own figure needs nothing here."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Number] = Field(init=False)

    steps: int | None = Field(None, ge=0)
    """Optimizer steps done."""
    train_loss: float | None = None
    """The last training loss logged."""
    trainable_parameters: int | None = Field(None, ge=0)
    total_parameters: int | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    """Trained (non-padding) tokens per second, all ranks together."""
    learning_rate: float | None = None
    precision: str | None = None
    """The precision trained in (fp32, bf16, fp16), the one figure that is a word."""
    compiled_layers: int | None = Field(None, ge=0)
    train_runtime_seconds: float | None = None
    eval_loss: float | None = None
    """The evaluation loss (final in `metrics`, before training in `baseline`)."""
    perplexity: float | None = None
    """exp(evalLoss), for tasks whose loss is per token."""
    wall_seconds: float | None = None
    """The run from its start to its outputs written."""

    @property
    def task_figures(self) -> dict[str, Number]:
        """The task's own figures (evalAccuracy, ...), by name."""
        return dict(self.model_extra or {})

    def numbers(self) -> dict[str, float]:
        """Every figure that is a finite number, by name (what a status can hold: NaN cannot
        travel in the API's JSON, and a diverged run's loss is NaN)."""
        return {
            name: float(value)
            for name, value in self.as_json().items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }

    def headline(self) -> Figures:
        """The figures the operator's status shows as the final progress."""
        return Figures(
            steps=self.steps,
            train_loss=self.train_loss,
            eval_loss=self.eval_loss,
            tokens_per_second=self.tokens_per_second,
        )


class EngineFacts(_Message):
    """What the training engine that ran was, as one rank saw it: real sharding tells itself
    from a silent fallback to plain data parallelism."""

    engine: str
    """The class that wrapped the model (DeepSpeedEngine, FSDP..., DistributedDataParallel, ...)."""
    world_size: int = Field(ge=1)
    parameter_elements: int = Field(ge=0)
    """Elements of the model's parameters, as the model defines them."""
    local_parameter_elements: int = Field(ge=0)
    """Elements this rank holds (fewer under ZeRO-3 or FSDP)."""
    zero_stage: int | None = Field(None, ge=0, le=3)
    fsdp_modules: int | None = Field(None, ge=0)


class DataSummary(_Message):
    """What happened to the examples on their way to the model (the trainer's DataStats), with
    what the run adds: a training run whether the task's default chat template was used, a
    preflight the evaluation examples and the labels found."""

    examples: int = Field(ge=0)
    """Examples read."""
    kept: int = Field(ge=0)
    """Examples trained on."""
    truncated: int = Field(ge=0)
    dropped_too_long: int = Field(ge=0)
    dropped_nothing_to_learn: int = Field(ge=0)
    tokens: int = Field(ge=0)
    trainable_tokens: int = Field(ge=0)
    longest: int = Field(ge=0)
    """Tokens of the longest example."""
    format: str
    """The data format detected (chat, completion, text, ...)."""
    default_chat_template: bool | None = None
    eval_examples: int | None = Field(None, ge=0)
    labels: list[str] | None = None


class HistoryRecord(_Message):
    """One log record of the Trainer (metrics.jsonl holds the same lines), under the Trainer's
    own names (loss, eval_loss, learning_rate, ...), with the step, the epoch and the trained
    tokens per second. The Trainer's other numbers (eval_runtime, train_runtime, the task's
    eval_accuracy, ...) are extra fields, in the order it logged them: the Trainer names
    them, not kubetune."""

    model_config = ConfigDict(alias_generator=None, extra="allow")
    __pydantic_extra__: dict[str, Number] = Field(init=False)

    step: int = Field(ge=0)
    epoch: Number | None = None
    """Epochs done; the Trainer logs 0 as an int before the first step."""
    tokens_per_second: float | None = Field(None, alias="tokensPerSecond")
    loss: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    eval_loss: float | None = None

    def logged(self) -> dict[str, Number]:
        """The record under the Trainer's names, as it logged it."""
        return {name: value for name, value in self.as_json().items() if name != "tokensPerSecond"}


class SampleAnswers(_Message):
    """One prompt of the data, its expected answer, and the model's before and after training."""

    prompt: str
    expected: str
    before: str = ""
    after: str = ""


class Confusion(_Message):
    """A classifier's confusion matrix at the final evaluation: true labels by row, predicted
    by column, in the labels' order."""

    labels: list[str]
    matrix: list[list[int]]

    @model_validator(mode="after")
    def _one_row_and_column_per_label(self) -> Self:
        size = len(self.labels)
        if len(self.matrix) != size or any(len(row) != size for row in self.matrix):
            raise ValueError(f"the matrix must be {size} x {size}, one row and column per label")
        return self


class RunSummary(_Message):
    """What a trainer or preflight run reports. Every field is optional: a failure carries
    status, reason and message alone, a preflight its data statistics and model facts, and a
    termination message cut to its 4096 bytes may have lost anything but the outcome."""

    status: str | None = None
    """Succeeded or Failed."""
    reason: str | None = None
    message: str | None = None
    output: SummaryOutput | None = None
    metrics: Figures | None = None
    """The final figures."""
    engine: EngineFacts | None = None
    """What the training engine did (rank 0's)."""
    data: DataSummary | None = None
    model: str | None = None
    method: str | None = None
    task: str | None = None
    baseline: Figures | None = None
    """The task's figures on the untrained model, where the run evaluated it."""
    history: list[HistoryRecord] | None = None
    samples: list[SampleAnswers] | None = None
    labels: list[str] | None = None
    confusion: Confusion | None = None
    """A classifier's confusion matrix at the final evaluation."""
    model_facts: ModelFacts | None = None
    """What a preflight read of a model that is not a preset, for sizing `accelerators: auto`."""

    @classmethod
    def failure(cls, reason: str, message: str) -> RunSummary:
        return cls(status="Failed", reason=reason, message=message)

    @property
    def reported(self) -> bool:
        """Whether the run reported anything at all (a crash leaves no summary)."""
        return bool(self.as_json())

    def dumps(self) -> str:
        """summary.json's text."""
        return json.dumps(self.as_json(), indent=2) + "\n"

    @classmethod
    def parse(cls, text: str) -> RunSummary:
        """A summary from a termination message or summary.json, read leniently: text that is
        not a JSON object is no summary, and a part that does not validate is left out (the
        rest still says how the run ended)."""
        try:
            raw = json.loads(text)
        except ValueError:
            return cls()
        return cls.from_json(raw) if isinstance(raw, dict) else cls()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunSummary:
        """The summary of a JSON object, leaving out what does not validate: one figure, one
        history record or one sample of the collections that hold independent entries (a bad
        loss leaves the other figures), else the whole field (partial model facts would
        size a job wrongly, a matrix without a cell would mislead)."""
        fields: Any = _without_dropped(dict(raw))
        while True:
            try:
                return cls.model_validate(fields)
            except ValidationError as error:
                if not all(_mark_dropped(fields, _dropped_part(e["loc"])) for e in error.errors()):
                    return cls()
                fields = _without_dropped(fields)


ENTRIES_DROPPED_ALONE = frozenset({"metrics", "baseline", "history", "samples"})
"""The summary's fields whose entries are independent: a bad one is left out alone."""
_DROPPED = object()
_MISSING = object()


def _dropped_part(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return loc[:2] if loc and loc[0] in ENTRIES_DROPPED_ALONE and len(loc) > 1 else loc[:1]


def _mark_dropped(fields: Any, path: tuple[int | str, ...]) -> bool:
    """Mark the part of `fields` at `path` to be left out; False when it holds no such part."""
    if not path:
        return False
    *parents, last = path
    holder = fields
    for key in parents:
        holder = _child(holder, key)
    part = _child(holder, last)
    if part is _DROPPED or holder is _DROPPED:
        return True  # marked already, for another error of the same part or of its holder
    if part is _MISSING:
        return False
    holder[last] = _DROPPED
    return True


def _child(holder: Any, key: int | str) -> Any:
    if isinstance(holder, dict):
        return holder.get(key, _MISSING)
    if isinstance(holder, list) and isinstance(key, int) and 0 <= key < len(holder):
        return holder[key]
    return _MISSING


def _without_dropped(value: Any) -> Any:
    """A copy of JSON data without the parts marked dropped."""
    if isinstance(value, dict):
        return {key: _without_dropped(item) for key, item in value.items() if item is not _DROPPED}
    if isinstance(value, list):
        return [_without_dropped(item) for item in value if item is not _DROPPED]
    return value


@dataclass(frozen=True)
class FinalFigures:
    """The final figures of a run as the operator's status shows them: the steps done, the
    last training loss, the final evaluation loss, the tokens per second, and every finite
    number by the trainer's name (the task's own, such as evalAccuracy or perplexity, too)."""

    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, summary: RunSummary) -> FinalFigures:
        """What the summary reports; figures that are absent or not finite numbers are left out
        (a summary cut to fit the 4096 bytes may have lost them all)."""
        if summary.metrics is None:
            return cls()
        numbers = summary.metrics.numbers()
        return cls(
            steps=summary.metrics.steps,
            train_loss=numbers.get("trainLoss"),
            eval_loss=numbers.get("evalLoss"),
            tokens_per_second=numbers.get("tokensPerSecond"),
            numbers=numbers,
        )


# ---------------------------------------------------------------------------- the pod's environment
# What a trainer process is told besides its spec. The operator renders it into each pod,
# `kubetune run` into the processes it starts, and the trainer reads it back: one model, so
# a variable one side sets and the other never reads (or reads with another default) cannot
# happen.

DEFAULT_RENDEZVOUS_PORT = 29500
DEFAULT_RESOLVE_TIMEOUT = 600.0


def _text_or_none(value: Any) -> Any:
    return None if value == "" else value


def _networks_in(value: Any) -> Any:
    return parse_networks(value) if isinstance(value, str) else value


class _Variables(BaseModel):
    """A model whose fields are environment variables: each field's alias is its variable."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    def variables(self) -> dict[str, str]:
        """The variables that carry this model, as strings; unset ones (None, False, empty)
        are left out, so the reader's default applies."""
        rendered: dict[str, str] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if info.alias is None:  # a nested model, rendered by its owner
                continue
            if value is None or value is False or value == ():
                continue
            if value is True:
                rendered[info.alias] = "1"
            elif isinstance(value, tuple):
                rendered[info.alias] = ",".join(str(item) for item in value)
            else:
                rendered[info.alias] = str(value)
        return rendered

    @classmethod
    def _read(cls, env: Mapping[str, str]) -> Self:
        try:
            return cls.model_validate({key: env[key] for key in _aliases(cls) if key in env})
        except ValidationError as error:
            first = error.errors()[0]
            cause = first.get("ctx", {}).get("error")
            said = f"{cause}" if cause else f"{first['msg']} (got {first['input']!r})"
            raise ValueError(f"{first['loc'][0]}: {said}") from None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [info.alias for info in model.model_fields.values() if info.alias is not None]


OptionalPath = Annotated[Path | None, BeforeValidator(_text_or_none)]


class Launch(_Variables):
    """How a training pod's torchrun meets its peers: static rendezvous at rank 0's pod."""

    nodes: int = Field(1, ge=1, alias=Env.NODES.value)
    procs_per_node: int = Field(1, ge=1, alias=Env.PROCS_PER_NODE.value)
    master_addr: str = Field("127.0.0.1", min_length=1, alias=Env.MASTER_ADDR.value)
    master_port: int = Field(DEFAULT_RENDEZVOUS_PORT, ge=1, le=65535, alias=Env.MASTER_PORT.value)
    resolve_timeout: float = Field(DEFAULT_RESOLVE_TIMEOUT, ge=0, alias=Env.RESOLVE_TIMEOUT.value)

    @classmethod
    def read(cls, env: Mapping[str, str]) -> Launch:
        """The launch variables of `env` (defaults for those unset: one node, one process).
        Raises ValueError naming the variable that does not parse."""
        return cls._read(env)


class PodEnvironment(_Variables):
    """The runtime facts a trainer process reads from its environment (torchrun's rank
    variables aside)."""

    spec: Path = Field(Path(DEFAULT_PATHS[Env.SPEC]), alias=Env.SPEC.value)
    job_name: str = Field("local", alias=Env.JOB_NAME.value)
    namespace: str = Field("default", alias=Env.NAMESPACE.value)
    volumes: Path = Field(Path(DEFAULT_PATHS[Env.VOLUMES]), alias=Env.VOLUMES.value)
    configmaps: Path = Field(Path(DEFAULT_PATHS[Env.CONFIGMAPS]), alias=Env.CONFIGMAPS.value)
    secrets: Path = Field(Path(DEFAULT_PATHS[Env.SECRETS]), alias=Env.SECRETS.value)
    work: Path = Field(Path(DEFAULT_PATHS[Env.WORK]), alias=Env.WORK.value)
    termination_log: Path = Field(Path(DEFAULT_PATHS[Env.TERMINATION_LOG]), alias=Env.TERMINATION_LOG.value)
    progress_port: int = Field(DEFAULT_PROGRESS_PORT, ge=0, le=65535, alias=Env.PROGRESS_PORT.value)
    output: OptionalPath = Field(None, alias=Env.OUTPUT.value)
    model_cache: OptionalPath = Field(None, alias=Env.MODEL_CACHE.value)
    allowed_networks: Annotated[tuple[Network, ...], BeforeValidator(_networks_in)] = Field(
        (), alias=Env.DATASET_ALLOWED_NETWORKS.value
    )
    outcome_shown_by_caller: bool = Field(False, alias=Env.OUTCOME_SHOWN_BY_CALLER.value)
    launch: Launch | None = None
    """Set in a training Job's pods, which start torchrun; not in the preflight's."""

    def variables(self) -> dict[str, str]:
        return super().variables() | (self.launch.variables() if self.launch is not None else {})

    def pod_env(self) -> list[dict[str, str]]:
        """The environment as a container's `env` list."""
        return [{"name": name, "value": value} for name, value in self.variables().items()]

    @classmethod
    def read(cls, env: Mapping[str, str]) -> PodEnvironment:
        """What `env` carries (defaults for what it leaves out); the launch part when any
        launch variable is set. Raises ValueError naming the variable that does not parse."""
        environment = cls._read(env)
        if any(name in env for name in _aliases(Launch)):
            environment = environment.model_copy(update={"launch": Launch.read(env)})
        return environment

    @staticmethod
    def termination_log_in(env: Mapping[str, str]) -> Path:
        """Where to write the summary when the rest of the environment does not parse."""
        return Path(env.get(Env.TERMINATION_LOG.value) or DEFAULT_PATHS[Env.TERMINATION_LOG])


VARIABLES = frozenset(_aliases(PodEnvironment) + _aliases(Launch))
"""Every variable of the contract: what `kubetune run` sets afresh for the processes it starts."""


# ---------------------------------------------------------------------------- progress
# Rank 0 serves its progress at GET /progress as the status's own model (camelCase JSON);
# the keeper parses the answer with it and writes it into status.progress. The model lives
# with the API, whose CRD schema is generated from it; it is imported at the top of this
# module (`from kubetune.contract import Progress`) so both sides name it here.


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
