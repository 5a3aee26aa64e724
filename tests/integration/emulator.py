"""A strict Kubernetes API server for integration tests, layered over kmock.

kmock 0.8's ``KubernetesEmulator`` stores objects as plain JSON documents: no uid,
generation or resourceVersion, watches that replay every object, no status subresource,
no PUT. A controller such as Kopf depends on all of these, so against it a create handler
runs twice and the second run hits 409. ``StrictKubernetesEmulator`` keeps kmock's
server, request log, discovery scaffold and error rendering, and answers every request
for a Kubernetes object from ``ObjectStore``, which keeps the API server's bookkeeping:

* uid, creationTimestamp, generation and one global resourceVersion, stamped on writes;
* optimistic locking (409 on a stale resourceVersion), AlreadyExists, NotFound;
* merge, strategic-merge (as merge) and JSON patches, PUT, the status subresource;
* structural pruning of custom resources by their CRD schema;
* finalizers, deletionTimestamp and garbage collection by ownerReferences;
* list and watch with label and field selectors, resume from a resourceVersion and
  410 Expired once that version has left the event log;
* CRDs created through the API become discoverable and servable.

Everything runs on the test's event loop and every store operation is synchronous, so
each write is atomic without locks and the plain accessors (``get_object`` and friends)
are safe to call from test code on that loop (not from other threads).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import datetime
import enum
import json
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import aiohttp.web
import attrs
import kmock

Obj = dict[str, Any]
ResourceKey = tuple[str, str, str]  # group, version, plural
ObjectKey = tuple[ResourceKey, str | None, str]  # resource, namespace (None if cluster-scoped), name

# The `reason` of a Status for each HTTP code, as the real API server spells it.
REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")
FOREGROUND_FINALIZER = "foregroundDeletion"

# Metadata the server owns: a client cannot change it through an update or a patch.
SERVER_OWNED_METADATA = (
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)

# ObjectMeta's fields; a custom resource keeps only these under `metadata`.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)

STALE_VERSION = "the object has been modified; please apply your changes to the latest version and try again"

NAMESPACED_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


# ----------------------------------------------------------------------------- errors


def api_error(
    code: int,
    message: str,
    *,
    resource: ApiResource | None = None,
    name: str | None = None,
    reason: str | None = None,
    retry_after: int | None = None,
) -> kmock.KubernetesError:
    """A failure that kmock renders as a Kubernetes ``Status`` with this code and reason."""
    details: dict[str, Any] = {}
    if resource is not None:
        details.update(group=resource.group, kind=resource.plural)
    if name is not None:
        details["name"] = name
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    return kmock.KubernetesError(
        status=code,
        reason=reason or REASONS.get(code, "Unknown"),
        message=message,
        details=details or {"causes": []},
    )


def not_found(resource: ApiResource, name: str) -> kmock.KubernetesError:
    return api_error(404, f'{resource.qualified_plural} "{name}" not found', resource=resource, name=name)


def conflict(resource: ApiResource, name: str, why: str) -> kmock.KubernetesError:
    message = f'Operation cannot be fulfilled on {resource.qualified_plural} "{name}": {why}'
    return api_error(409, message, resource=resource, name=name)


def invalid(resource: ApiResource, name: str | None, why: str) -> kmock.KubernetesError:
    message = f'{resource.qualified_kind} "{name or ""}" is invalid: {why}'
    return api_error(422, message, resource=resource, name=name)


def bad_request(resource: ApiResource, why: str) -> kmock.KubernetesError:
    return api_error(400, why, resource=resource)


def unknown_path(resource: ApiResource | None = None) -> kmock.KubernetesError:
    return api_error(404, "the server could not find the requested resource", resource=resource)


# ----------------------------------------------------------------------------- resources


@dataclasses.dataclass(frozen=True)
class ApiResource:
    """One served resource: what discovery says about it and the rules its objects follow."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str = ""
    namespaced: bool = True
    status_subresource: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    custom: bool = False  # served from a CRD: pruned by `schema`, no strategic merge patches
    schema: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)
    default_propagation: str = "Background"
    name_format: str = "subdomain"  # a key of NAME_FORMATS
    selectable_fields: tuple[str, ...] = ()  # beyond metadata.name and metadata.namespace
    initial_status: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)

    @property
    def key(self) -> ResourceKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_plural(self) -> str:
        """As the API server names the resource in its messages: `finetunejobs.kubetune.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @classmethod
    def from_crd(cls, crd: Mapping[str, Any]) -> ApiResource:
        """The resource a CustomResourceDefinition declares, served at its storage version."""
        spec = crd["spec"]
        names = spec["names"]
        version = storage_version(crd)
        subresources = version.get("subresources") or {}
        return cls(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            status_subresource="status" in subresources,
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            custom=True,
            schema=(version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"},
            selectable_fields=tuple(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or ()),
        )


def storage_version(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    versions = crd["spec"]["versions"]
    return next((v for v in versions if v.get("storage")), versions[0])


CRD_KEY: ResourceKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES_KEY: ResourceKey = ("", "v1", "namespaces")

# The fields the real API server lets a field selector use, per resource.
INVOLVED_OBJECT_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
EVENT_FIELDS = (
    *(f"involvedObject.{field}" for field in INVOLVED_OBJECT_FIELDS),
    "reason",
    "reportingComponent",
    "source",
    "type",
)
POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)

# Status subresources follow the real API server: they decide which writes may touch status.
BUILTIN_RESOURCES: tuple[ApiResource, ...] = (
    ApiResource("", "v1", "configmaps", "ConfigMap", "configmap", short_names=("cm",)),
    ApiResource(
        "", "v1", "services", "Service", "service", status_subresource=True, short_names=("svc",), name_format="dns1035"
    ),
    ApiResource(
        "", "v1", "pods", "Pod", "pod", status_subresource=True, short_names=("po",), selectable_fields=POD_FIELDS
    ),
    ApiResource("", "v1", "events", "Event", "event", short_names=("ev",), selectable_fields=EVENT_FIELDS),
    ApiResource("", "v1", "secrets", "Secret", "secret", selectable_fields=("type",)),
    ApiResource(
        "",
        "v1",
        "namespaces",
        "Namespace",
        "namespace",
        namespaced=False,
        status_subresource=True,
        short_names=("ns",),
        name_format="label",
        initial_status={"phase": "Active"},
        selectable_fields=("status.phase",),
    ),
    ApiResource(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        "persistentvolumeclaim",
        status_subresource=True,
        short_names=("pvc",),
        initial_status={"phase": "Pending"},
    ),
    # Deleting a Job through the API without a policy orphans its pods, as in real Kubernetes.
    ApiResource(
        "batch",
        "v1",
        "jobs",
        "Job",
        "job",
        status_subresource=True,
        default_propagation="Orphan",
        name_format="job",
        selectable_fields=("status.successful",),
    ),
    ApiResource("events.k8s.io", "v1", "events", "Event", "event", short_names=("ev",)),
    ApiResource(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        "customresourcedefinition",
        namespaced=False,
        status_subresource=True,
        short_names=("crd", "crds"),
    ),
    ApiResource("kueue.x-k8s.io", "v1beta1", "workloads", "Workload", "workload", status_subresource=True),
    ApiResource("coordination.k8s.io", "v1", "leases", "Lease", "lease"),
)


# ----------------------------------------------------------------------------- names and labels

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"

# Which object names a resource accepts: (pattern, longest name, what the rule is called).
NAME_FORMATS: dict[str, tuple[str, int, str]] = {
    "subdomain": (_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain"),
    "label": (_LABEL, 63, "a lowercase RFC 1123 label"),
    "dns1035": (r"[a-z]([-a-z0-9]*[a-z0-9])?", 63, "a DNS-1035 label"),
    # A Job's name becomes the value of its pods' job-name label, hence 63.
    "job": (_SUBDOMAIN, 63, "a lowercase RFC 1123 subdomain of at most 63 characters"),
}


def name_problem(resource: ApiResource, name: str) -> str | None:
    pattern, longest, rule = NAME_FORMATS[resource.name_format]
    if len(name) > longest or not re.fullmatch(pattern, name):
        return f'metadata.name: Invalid value: "{name}": must be {rule} (at most {longest} characters)'
    return None


def label_problems(labels: Any) -> list[str]:
    """Why these labels would be refused: values over 63 characters are a classic controller bug."""
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return ["metadata.labels: Invalid value: must be a map of strings"]
    problems = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not re.fullmatch(_SUBDOMAIN, prefix)):
            problems.append(f'metadata.labels: Invalid value: "{key}": the prefix must be a DNS subdomain')
        if len(name) > 63 or not re.fullmatch(_LABEL_NAME, name):
            problems.append(f'metadata.labels: Invalid value: "{key}": name part must be a valid label name')
        if not isinstance(value, str) or len(value) > 63 or (value and not re.fullmatch(_LABEL_NAME, value)):
            problems.append(f'metadata.labels: Invalid value: "{value}": must be a valid label value')
    return problems


def generated_name(prefix: str) -> str:
    """A name from `generateName`: the prefix and five characters, as the API server makes them."""
    return prefix + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- patches


class PatchError(ValueError):
    """A patch that cannot be applied; the API server answers 422."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of the document; any failed operation fails the whole patch."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    document = copy.deepcopy(document)
    for operation in operations:
        document = _json_patch_operation(document, operation)
    return document


def _json_patch_operation(document: Any, operation: Any) -> Any:
    if not isinstance(operation, dict) or "path" not in operation:
        raise PatchError(f"malformed JSON patch operation: {operation!r}")
    op, path = operation.get("op"), _pointer(operation["path"])
    if op in ("add", "replace", "test") and "value" not in operation:
        raise PatchError(f"JSON patch operation {op!r} on {operation['path']} has no value")
    match op:
        case "add":
            return _pointer_add(document, path, copy.deepcopy(operation["value"]))
        case "remove":
            return _pointer_remove(document, path)
        case "replace":
            _pointer_get(document, path)  # the target must exist
            return _pointer_add(_pointer_remove(document, path), path, copy.deepcopy(operation["value"]))
        case "move":
            source = _pointer(operation.get("from", ""))
            value = _pointer_get(document, source)
            return _pointer_add(_pointer_remove(document, source), path, value)
        case "copy":
            value = copy.deepcopy(_pointer_get(document, _pointer(operation.get("from", ""))))
            return _pointer_add(document, path, value)
        case "test":
            actual = _pointer_get(document, path)
            if actual != operation["value"]:
                raise PatchError(
                    f"JSON patch test operation failed: {operation['path']} is {json.dumps(actual)}, "
                    f"not {json.dumps(operation['value'])}"
                )
            return document
        case _:
            raise PatchError(f"unknown JSON patch operation: {op!r}")


def _pointer(text: Any) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchError(f"invalid JSON pointer: {text!r}")
    return [token.replace("~1", "/").replace("~0", "~") for token in text.split("/")[1:]]


def _pointer_get(document: Any, path: list[str]) -> Any:
    for token in path:
        document = _child(document, token)
    return document


def _child(container: Any, token: str) -> Any:
    if isinstance(container, dict) and token in container:
        return container[token]
    if isinstance(container, list) and token.isdigit() and int(token) < len(container):
        return container[int(token)]
    raise PatchError(f"JSON patch path not found: {token!r} is missing")


def _pointer_add(document: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _pointer_get(document, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list) and token == "-":
        parent.append(value)
    elif isinstance(parent, list) and token.isdigit() and int(token) <= len(parent):
        parent.insert(int(token), value)
    else:
        raise PatchError(f"JSON patch cannot add at {token!r}: no such parent or index")
    return document


def _pointer_remove(document: Any, path: list[str]) -> Any:
    if not path:
        raise PatchError("JSON patch cannot remove the whole document")
    parent = _pointer_get(document, path[:-1])
    _child(parent, path[-1])  # must exist
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        del parent[int(path[-1])]
    return document


# ----------------------------------------------------------------------------- pruning


def prune_custom_object(obj: Obj, schema: Mapping[str, Any]) -> Obj:
    """Drop what the CRD's structural schema does not declare, as the API server does on writes.

    apiVersion, kind and metadata are always kept, metadata cut down to ObjectMeta's fields.
    """
    pruned = prune(obj, schema)
    pruned["apiVersion"], pruned["kind"] = obj.get("apiVersion"), obj.get("kind")
    if isinstance(obj.get("metadata"), dict):
        pruned["metadata"] = {k: v for k, v in obj["metadata"].items() if k in OBJECT_META_FIELDS}
    return dict(pruned)


def prune(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Structural pruning of one value: unknown object fields go unless the schema preserves them."""
    if schema is None:
        return value
    if isinstance(value, dict):
        return _prune_object(value, schema)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune(item, schema["items"]) for item in value]
    return value


def _prune_object(value: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    embedded = schema.get("x-kubernetes-embedded-resource") is True
    pruned: dict[str, Any] = {}
    for key, item in value.items():
        if key in properties:
            pruned[key] = prune(item, properties[key])
        elif isinstance(additional, Mapping):
            pruned[key] = prune(item, additional)
        elif preserve or additional is True or (embedded and key in ("apiVersion", "kind", "metadata")):
            pruned[key] = item
    return pruned


# ----------------------------------------------------------------------------- selectors


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One term of a label or field selector."""

    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.operator:
            case "=" | "in":
                return present and labels[self.key] in self.values
            case "!=" | "notin":
                return not present or labels[self.key] not in self.values
            case "exists":
                return present
            case _:
                return not present


_SELECTOR_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse `a=b,c!=d,e,!f,g in (x,y),h notin (z)` into requirements that must all hold."""
    return tuple(_requirement(term) for term in _selector_terms(text))


def _selector_terms(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for index, char in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            if term := text[start:index].strip():
                yield term
            start = index + 1


def _requirement(term: str) -> Requirement:
    if m := re.fullmatch(rf"({_SELECTOR_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", term):
        operator = "!=" if m[2] == "!=" else "="
        return Requirement(m[1], operator, frozenset({m[3]}))
    if m := re.fullmatch(rf"({_SELECTOR_KEY})\s+(in|notin)\s*\(([^()]*)\)", term):
        values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
        return Requirement(m[1], m[2], values)
    if m := re.fullmatch(rf"(!?)\s*({_SELECTOR_KEY})", term):
        return Requirement(m[2], "!" if m[1] else "exists")
    raise ValueError(f"unable to parse requirement: {term!r}")


# Every resource can be selected by these fields; some by more (ApiResource.selectable_fields).
COMMON_SELECTABLE_FIELDS = ("metadata.name", "metadata.namespace")

# Field labels that are not the path of the value they select.
FIELD_LABEL_PATHS = {"source": "source.component"}


@dataclasses.dataclass(frozen=True)
class Selector:
    """Which objects a list or watch wants: labels, fields, and a name from the URL."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @classmethod
    def from_query(cls, params: Mapping[str, str], selectable: Iterable[str] = (), name: str | None = None) -> Selector:
        """The selector of a request; fields outside `selectable` are refused, as the server does."""
        allowed = {*COMMON_SELECTABLE_FIELDS, *selectable}
        fields = parse_selector(params.get("fieldSelector", ""))
        for requirement in fields:
            if requirement.key not in allowed or requirement.operator not in ("=", "!="):
                raise ValueError(f'field label not supported: "{requirement.key}"')
        if name is not None:
            fields += (Requirement("metadata.name", "=", frozenset({name})),)
        return cls(parse_selector(params.get("labelSelector", "")), fields)

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        fields = {requirement.key: field_value(obj, requirement.key) for requirement in self.fields}
        return all(r.matches(labels) for r in self.labels) and all(r.matches(fields) for r in self.fields)


def field_value(obj: Obj, label: str) -> str:
    """A field as a field selector sees it: a string, empty if absent."""
    value: Any = obj
    for key in FIELD_LABEL_PATHS.get(label, label).split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------- watching


@dataclasses.dataclass(frozen=True)
class Change:
    """One write as the event log keeps it: the object after it, and before it for selectors."""

    revision: int
    resource: ResourceKey
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj
    previous: Obj | None = None


class StreamEnd(enum.Enum):
    CLEAN = "clean"  # finish the HTTP response properly
    ABRUPT = "abrupt"  # cut the connection, as a dying API server or a load balancer would


@dataclasses.dataclass(eq=False)
class Watch:
    """An open watch: what it wants and the queue its events wait in."""

    resource: ResourceKey
    namespace: str | None
    selector: Selector
    queue: asyncio.Queue[dict[str, Any] | StreamEnd] = dataclasses.field(default_factory=asyncio.Queue)

    def event_for(self, change: Change) -> dict[str, Any] | None:
        """The event this watch sees for a change, if any.

        As in the real watch cache, an object that starts or stops matching the selector
        is seen as ADDED or DELETED.
        """
        if change.resource != self.resource:
            return None
        now = self._wants(change.object)
        before = change.previous is not None and self._wants(change.previous)
        if change.type == "MODIFIED" and now != before:
            return {"type": "ADDED" if now else "DELETED", "object": change.object}
        return {"type": change.type, "object": change.object} if now else None

    def offer(self, change: Change) -> None:
        if (event := self.event_for(change)) is not None:
            self.queue.put_nowait(event)

    def _wants(self, obj: Obj) -> bool:
        namespace = (obj.get("metadata") or {}).get("namespace")
        return (self.namespace is None or namespace == self.namespace) and self.selector.matches(obj)


# ----------------------------------------------------------------------------- the store


@dataclasses.dataclass(frozen=True)
class DeleteOptions:
    """What a DELETE asks for: a propagation policy, and preconditions on the object."""

    policy: str | None = None
    uid: str | None = None  # preconditions
    resource_version: str | None = None


class ObjectStore:
    """Kubernetes objects in memory with the API server's bookkeeping.

    Every method is synchronous and runs on one event loop, so each write is atomic:
    a watch registered in the same step as its snapshot misses nothing.
    """

    def __init__(self, resources: Iterable[ApiResource], *, event_log_size: int = 1000) -> None:
        self.resources: dict[ResourceKey, ApiResource] = {r.key: r for r in resources}
        self.revision = 0
        self._objects: dict[ObjectKey, Obj] = {}
        self._log: collections.deque[Change] = collections.deque()
        self._log_size = event_log_size
        self._forgotten_revision = 0  # events up to this revision have left the log
        self._watches: set[Watch] = set()
        self._deletion_policies: dict[str, str] = {}  # uid -> policy of a deletion waiting on finalizers
        self._crd_resources: dict[str, ResourceKey] = {}  # CRD name -> the resource it serves
        self._missed: collections.Counter[str] = collections.Counter()  # plural -> changes no watch sees

    # -- reading

    def resource(self, group: str, version: str, plural: str) -> ApiResource | None:
        return self.resources.get((group, version, plural))

    def find(self, resource: ApiResource, namespace: str | None, name: str) -> Obj | None:
        return self._objects.get((resource.key, _scope(resource, namespace), name))

    def get(self, resource: ApiResource, namespace: str | None, name: str) -> Obj:
        found = self.find(resource, namespace, name)
        if found is None:
            raise not_found(resource, name)
        return copy.deepcopy(found)

    def objects(self, resource: ApiResource, namespace: str | None, selector: Selector | None = None) -> list[Obj]:
        """Matching objects in the order etcd would return them: by namespace, then name."""
        selector = selector or Selector()
        found = [
            obj
            for (key, obj_namespace, _), obj in self._objects.items()
            if key == resource.key and namespace in (None, obj_namespace) and selector.matches(obj)
        ]
        found.sort(key=lambda obj: (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        return copy.deepcopy(found)

    # -- creating

    def create(self, resource: ApiResource, namespace: str | None, body: Any) -> Obj:
        obj = self._new_object(resource, namespace, body)
        metadata = obj["metadata"]
        if self.find(resource, metadata.get("namespace"), metadata["name"]) is not None:
            message = f'{resource.qualified_plural} "{metadata["name"]}" already exists'
            raise api_error(409, message, resource=resource, name=metadata["name"], reason="AlreadyExists")
        self._require_namespace(resource, metadata.get("namespace"))
        if resource.key == CRD_KEY:
            obj["status"] = self._serve_crd(obj)
        self._save(resource, obj, "ADDED")
        return copy.deepcopy(obj)

    def _new_object(self, resource: ApiResource, namespace: str | None, body: Any) -> Obj:
        obj = _typed_body(resource, body)
        metadata = obj["metadata"]
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = generated_name(metadata["generateName"])
        if not metadata.get("name"):
            raise invalid(resource, None, "metadata.name: Required value: name or generateName is required")
        _place_in_namespace(resource, metadata, namespace)
        if metadata.get("resourceVersion"):
            # The real server answers this with a plain error, hence 500.
            raise api_error(500, "resourceVersion should not be set on objects to be created", resource=resource)
        if resource.status_subresource:
            obj.pop("status", None)
            if resource.initial_status is not None:
                obj["status"] = copy.deepcopy(dict(resource.initial_status))
        if resource.key == CRD_KEY:
            _check_crd(resource, obj)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=timestamp(), generation=1)
        return _admitted(resource, obj)

    def _require_namespace(self, resource: ApiResource, namespace: str | None) -> None:
        if namespace is None:
            return
        found = self._objects.get((NAMESPACES_KEY, None, namespace))
        if found is None:
            raise api_error(404, f'namespaces "{namespace}" not found', resource=resource, name=namespace)
        if found["metadata"].get("deletionTimestamp"):
            message = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise api_error(403, message, resource=resource)

    # -- updating

    def replace(
        self, resource: ApiResource, namespace: str | None, name: str, body: Any, subresource: str | None = None
    ) -> Obj:
        """PUT: the body replaces the object, under the same rules as a patch."""
        stored = self._stored(resource, namespace, name)
        return self._update(resource, stored, _typed_body(resource, body), subresource)

    def patch(
        self,
        resource: ApiResource,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        subresource: str | None = None,
    ) -> Obj:
        """PATCH with `merge` (RFC 7386) or `json` (RFC 6902) semantics."""
        stored = self._stored(resource, namespace, name)
        try:
            if patch_type == "json":
                candidate = json_patch(stored, patch)
            elif isinstance(patch, dict):
                candidate = merge_patch(stored, patch)
            else:
                raise PatchError("a merge patch must be a JSON object")
        except PatchError as error:
            raise invalid(resource, name, str(error)) from None
        return self._update(resource, stored, _typed_body(resource, candidate), subresource)

    def _update(self, resource: ApiResource, stored: Obj, candidate: Obj, subresource: str | None) -> Obj:
        name = stored["metadata"]["name"]
        wanted_version = candidate["metadata"].get("resourceVersion")
        if wanted_version and wanted_version != stored["metadata"]["resourceVersion"]:
            raise conflict(resource, name, STALE_VERSION)
        _check_identity(resource, stored, candidate)
        updated = _with_status_rules(resource, stored, candidate, subresource)
        for field in ("name", "namespace", *SERVER_OWNED_METADATA):
            _copy_field(stored["metadata"], updated["metadata"], field)
        updated = _admitted(resource, updated)
        added_finalizers = set(_finalizers(updated)) - set(_finalizers(stored))
        if _is_deleting(stored) and added_finalizers:
            why = "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
            raise invalid(resource, name, why)
        if resource.key == CRD_KEY:
            _check_crd(resource, updated)
        return self._commit(resource, stored, updated)

    def _commit(self, resource: ApiResource, stored: Obj, updated: Obj) -> Obj:
        """Store an update, or finish a deletion whose last finalizer it removed."""
        if updated == stored:
            return copy.deepcopy(stored)  # a no-op write: no new resourceVersion, no event
        if _spec_of(resource, updated) != _spec_of(resource, stored):
            updated["metadata"]["generation"] = stored["metadata"].get("generation", 1) + 1
        if _is_deleting(updated) and not _finalizers(updated):
            policy = self._deletion_policies.pop(updated["metadata"]["uid"], resource.default_propagation)
            return self._remove(resource, updated, policy)
        if resource.key == CRD_KEY:
            updated["status"] = self._serve_crd(updated)
        self._save(resource, updated, "MODIFIED", previous=stored)
        return copy.deepcopy(updated)

    # -- deleting

    def delete(
        self, resource: ApiResource, namespace: str | None, name: str, options: DeleteOptions | None = None
    ) -> tuple[Obj, bool]:
        """Delete an object; say whether it is gone (True) or waits on finalizers (False)."""
        options = options or DeleteOptions()
        stored = self._stored(resource, namespace, name)
        metadata = stored["metadata"]
        if options.uid not in (None, metadata["uid"]):
            why = f"Precondition failed: UID in precondition: {options.uid}, UID in object meta: {metadata['uid']}"
            raise conflict(resource, name, why)
        if options.resource_version not in (None, metadata["resourceVersion"]):
            raise conflict(resource, name, "Precondition failed: resourceVersion does not match")
        return self._delete(resource, stored, options.policy or resource.default_propagation)

    def _delete(self, resource: ApiResource, stored: Obj, policy: str) -> tuple[Obj, bool]:
        if _is_deleting(stored):
            return copy.deepcopy(stored), False
        uid = stored["metadata"]["uid"]
        waits_for_dependents = policy == "Foreground" and any(self._dependents(uid))
        if not _finalizers(stored) and not waits_for_dependents:
            return self._remove(resource, stored, policy), True
        marked = copy.deepcopy(stored)
        marked["metadata"].update(deletionTimestamp=timestamp(), deletionGracePeriodSeconds=0)
        if waits_for_dependents:
            marked["metadata"]["finalizers"] = [*_finalizers(marked), FOREGROUND_FINALIZER]
        self._deletion_policies[uid] = policy
        self._save(resource, marked, "MODIFIED", previous=stored)
        if waits_for_dependents:
            self._collect_dependents(uid, "Foreground")
        found = self.find(resource, marked["metadata"].get("namespace"), marked["metadata"]["name"])
        return copy.deepcopy(found or marked), found is None

    def _remove(self, resource: ApiResource, obj: Obj, policy: str) -> Obj:
        """Take an object out for good, then let the garbage collector and controllers react."""
        removed = copy.deepcopy(obj)
        metadata = removed["metadata"]
        del self._objects[(resource.key, metadata.get("namespace"), metadata["name"])]
        self.revision += 1
        metadata["resourceVersion"] = str(self.revision)
        self._record(Change(self.revision, resource.key, "DELETED", copy.deepcopy(removed)))
        self._collect_dependents(metadata["uid"], policy)
        self._release_foreground_owners(removed)
        if resource.key == CRD_KEY:
            self._retire_crd(removed)
        if resource.key == NAMESPACES_KEY:
            self._empty_namespace(metadata["name"])
        return removed

    def _dependents(self, owner_uid: str) -> Iterator[tuple[ApiResource, Obj]]:
        for (key, _, _), obj in list(self._objects.items()):
            if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or ()):
                yield self.resources[key], obj

    def _collect_dependents(self, owner_uid: str, policy: str) -> None:
        """The garbage collector's part: orphan the dependents, or delete them in turn."""
        for resource, dependent in list(self._dependents(owner_uid)):
            if not self._still_stored(resource, dependent):
                continue  # an earlier cascade in this loop took it already
            if policy == "Orphan":
                disowned = copy.deepcopy(dependent)
                refs = disowned["metadata"]["ownerReferences"]
                disowned["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != owner_uid]
                self._commit(resource, dependent, disowned)
            else:
                self._delete(resource, dependent, policy)

    def _release_foreground_owners(self, removed: Obj) -> None:
        """An owner deleted in the foreground goes once its last dependent has gone."""
        for ref in removed["metadata"].get("ownerReferences") or ():
            owner = self._by_uid(ref.get("uid"))
            if owner is None or FOREGROUND_FINALIZER not in _finalizers(owner[1]) or any(self._dependents(ref["uid"])):
                continue
            resource, stored = owner
            released = copy.deepcopy(stored)
            released["metadata"]["finalizers"] = [f for f in _finalizers(stored) if f != FOREGROUND_FINALIZER]
            self._commit(resource, stored, released)

    def _empty_namespace(self, namespace: str) -> None:
        for (key, obj_namespace, _), obj in list(self._objects.items()):
            if obj_namespace == namespace and self._still_stored(self.resources[key], obj):
                self._delete(self.resources[key], obj, "Background")

    # -- custom resource definitions

    def _serve_crd(self, crd: Obj) -> Obj:
        """Serve (or re-serve) what a CRD declares; return the status the server gives the CRD."""
        resource = ApiResource.from_crd(crd)
        previous = self._crd_resources.get(crd["metadata"]["name"])
        if previous is not None and previous != resource.key:
            self.resources.pop(previous, None)
        self.resources[resource.key] = resource
        self._crd_resources[crd["metadata"]["name"]] = resource.key
        conditions = [{"type": kind, "status": "True", "reason": kind} for kind in ("NamesAccepted", "Established")]
        return {
            "acceptedNames": copy.deepcopy(crd["spec"]["names"]),
            "conditions": conditions,
            "storedVersions": [resource.version],
        }

    def _retire_crd(self, crd: Obj) -> None:
        """A deleted CRD takes its objects and its open watches with it."""
        key = self._crd_resources.pop(crd["metadata"]["name"], None)
        if key is None or key not in self.resources:
            return
        resource = self.resources[key]
        for (obj_key, _, _), obj in list(self._objects.items()):
            if obj_key == key:
                self._remove(resource, obj, "Background")
        for watch in [w for w in self._watches if w.resource == key]:
            watch.queue.put_nowait(StreamEnd.CLEAN)
        del self.resources[key]

    # -- watching

    def watch(
        self, resource: ApiResource, namespace: str | None, selector: Selector, since: str | None
    ) -> tuple[list[dict[str, Any]], Watch]:
        """Open a watch; return the events it must see first and the watch for live ones.

        Without a resourceVersion (or with "0"), the first events are a synthetic ADDED for
        every matching object. With one, they are the logged changes after it; 410 Expired
        if the log no longer reaches back that far.
        """
        watch = Watch(resource.key, namespace, selector)
        if since in (None, "", "0"):
            backlog = [{"type": "ADDED", "object": obj} for obj in self.objects(resource, namespace, selector)]
        else:
            revision = _revision(resource, since)
            if revision < self._forgotten_revision:
                message = f"too old resource version: {revision} ({self._forgotten_revision})"
                raise api_error(410, message, resource=resource, reason="Expired")
            changes = (change for change in self._log if change.revision > revision)
            backlog = [event for change in changes if (event := watch.event_for(change)) is not None]
        self._watches.add(watch)
        return backlog, watch

    def unwatch(self, watch: Watch) -> None:
        self._watches.discard(watch)

    def end_watches(self, how: StreamEnd) -> int:
        for watch in self._watches:
            watch.queue.put_nowait(how)
        return len(self._watches)

    def compact(self) -> None:
        """Forget every logged change, as etcd compaction does: older resourceVersions expire."""
        self._log.clear()
        self._forgotten_revision = self.revision

    # -- internals

    def _stored(self, resource: ApiResource, namespace: str | None, name: str) -> Obj:
        found = self.find(resource, namespace, name)
        if found is None:
            raise not_found(resource, name)
        return found

    def _still_stored(self, resource: ApiResource, obj: Obj) -> bool:
        metadata = obj["metadata"]
        current = self.find(resource, metadata.get("namespace"), metadata["name"])
        return current is not None and current["metadata"]["uid"] == metadata["uid"]

    def _by_uid(self, uid: str | None) -> tuple[ApiResource, Obj] | None:
        for (key, _, _), obj in self._objects.items():
            if obj["metadata"]["uid"] == uid:
                return self.resources[key], obj
        return None

    def _save(self, resource: ApiResource, obj: Obj, change: str, previous: Obj | None = None) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self._objects[(resource.key, obj["metadata"].get("namespace"), obj["metadata"]["name"])] = obj
        self._record(Change(self.revision, resource.key, change, copy.deepcopy(obj), copy.deepcopy(previous)))

    def miss(self, plural: str, times: int) -> None:
        """The next `times` changes of the kind reach no open watch (a listing still sees them)."""
        self._missed[plural] += times

    def _record(self, change: Change) -> None:
        self._log.append(change)
        while len(self._log) > self._log_size:
            self._forgotten_revision = self._log.popleft().revision
        plural = change.resource[2]
        if self._missed[plural] > 0:
            self._missed[plural] -= 1
            return
        for watch in self._watches:
            watch.offer(change)


def _scope(resource: ApiResource, namespace: str | None) -> str | None:
    return namespace if resource.namespaced else None


def _revision(resource: ApiResource, text: str) -> int:
    if not text.isdigit():
        raise bad_request(resource, f'resourceVersion: Invalid value: "{text}": must be an integer')
    return int(text)


def _typed_body(resource: ApiResource, body: Any) -> Obj:
    """A copy of a request body that is an object of this resource's kind, or 400/422."""
    if not isinstance(body, dict):
        raise invalid(resource, None, "the request body must be a JSON object")
    for field, expected in (("kind", resource.kind), ("apiVersion", resource.api_version)):
        if body.get(field) not in (None, expected):
            why = f"the {field} of the object ({body[field]}) does not match the request ({expected})"
            raise bad_request(resource, why)
    rest = {key: value for key, value in body.items() if key not in ("apiVersion", "kind")}
    obj = {"apiVersion": resource.api_version, "kind": resource.kind, **copy.deepcopy(rest)}
    if not isinstance(obj.setdefault("metadata", {}), dict):
        raise invalid(resource, None, "metadata: Invalid value: must be an object")
    return obj


def _place_in_namespace(resource: ApiResource, metadata: Obj, namespace: str | None) -> None:
    if not resource.namespaced:
        metadata.pop("namespace", None)
        return
    if metadata.get("namespace") not in (None, namespace):
        raise bad_request(
            resource, "the namespace of the provided object does not match the namespace sent on the request"
        )
    metadata["namespace"] = namespace


def _check_identity(resource: ApiResource, stored: Obj, candidate: Obj) -> None:
    """Name and namespace come from the URL, and a uid pins the very object meant."""
    old, new = stored["metadata"], candidate["metadata"]
    for field in ("name", "namespace"):
        if new.get(field, old.get(field)) != old.get(field):
            why = (
                f"the {field} of the object ({new.get(field)}) does not match the {field} on the URL ({old.get(field)})"
            )
            raise bad_request(resource, why)
    if new.get("uid") not in (None, "", old["uid"]):
        why = f"Precondition failed: UID in precondition: {new['uid']}, UID in object meta: {old['uid']}"
        raise conflict(resource, old["name"], why)


def _with_status_rules(resource: ApiResource, stored: Obj, candidate: Obj, subresource: str | None) -> Obj:
    """What a write may change: with a status subresource, the main resource cannot touch status
    and `/status` can touch nothing else."""
    if not resource.status_subresource:
        return candidate
    if subresource == "status":
        updated = copy.deepcopy(stored)
        _copy_field(candidate, updated, "status")
        return updated
    _copy_field(stored, candidate, "status")
    return candidate


def _admitted(resource: ApiResource, obj: Obj) -> Obj:
    """Prune and check an object as the server does before it stores one."""
    if resource.custom and resource.schema is not None:
        obj = prune_custom_object(obj, resource.schema)
    metadata = obj["metadata"]
    problems = label_problems(metadata.get("labels"))
    if problem := name_problem(resource, metadata["name"]):
        problems.insert(0, problem)
    if problems:
        raise invalid(resource, metadata["name"], ", ".join(problems))
    return obj


def _check_crd(resource: ApiResource, crd: Obj) -> None:
    spec, name = crd.get("spec") or {}, crd["metadata"]["name"]
    names = spec.get("names") or {}
    versions = spec.get("versions") or []
    problems = []
    if not spec.get("group") or not names.get("plural") or not names.get("kind"):
        problems.append("spec.group, spec.names.plural and spec.names.kind are required")
    elif name != f"{names['plural']}.{spec['group']}":
        problems.append(f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append("spec.scope: Unsupported value: must be Namespaced or Cluster")
    if not versions or sum(bool(v.get("storage")) for v in versions) != 1:
        problems.append("spec.versions: Invalid value: exactly one version must be the storage version")
    if problems:
        raise invalid(resource, name, ", ".join(problems))


def _spec_of(resource: ApiResource, obj: Obj) -> Obj:
    """What the generation counts: all but metadata, and but status when it has its own endpoint."""
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if resource.status_subresource else set())
    return {key: value for key, value in obj.items() if key not in skipped}


def _copy_field(source: Obj, target: Obj, field: str) -> None:
    if field in source:
        target[field] = copy.deepcopy(source[field])
    else:
        target.pop(field, None)


def _finalizers(obj: Obj) -> list[str]:
    return list(obj["metadata"].get("finalizers") or [])


def _is_deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


# ----------------------------------------------------------------------------- HTTP


NAMESPACE_SUBRESOURCES = ("status", "finalize")


@dataclasses.dataclass(frozen=True)
class ObjectPath:
    """Where a request for Kubernetes objects points."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_object_path(path: str) -> ObjectPath | None:
    """Read an object URL; None for anything else (discovery, /version, other paths).

    kmock 0.8's own parser fails on the namespaces collection (`/api/v1/namespaces`), so
    object URLs are read here.
    """
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    is_namespace_itself = len(rest) <= 2 or (len(rest) == 3 and rest[2] in NAMESPACE_SUBRESOURCES)
    if rest[0] == "namespaces" and not is_namespace_itself:
        namespace, rest = rest[1], rest[2:]
    plural, *tail = rest
    name = tail[0] if tail else None
    return ObjectPath(group, version, plural, namespace, name, "/".join(tail[1:]) or None)


def request_verb(method: str, path: ObjectPath, params: Mapping[str, str]) -> str | None:
    """The Kubernetes verb (as in RBAC) of a request, or None if the API has no such request."""
    named = path.name is not None
    match method:
        case "GET":
            return "watch" if params.get("watch") in ("true", "1") else "get" if named else "list"
        case "POST":
            return None if named else "create"
        case "PUT":
            return "update" if named else None
        case "PATCH":
            return "patch" if named else None
        case "DELETE":
            return "delete" if named else "deletecollection"
    return None


# kmock's own names for verbs, so that its request log can be filtered as usual.
KMOCK_ACTIONS = {
    "get": kmock.action.FETCH,
    "list": kmock.action.LIST,
    "watch": kmock.action.WATCH,
    "create": kmock.action.CREATE,
    "patch": kmock.action.UPDATE,
    "delete": kmock.action.DELETE,
}


class Write(NamedTuple):
    """One write the API answered with success, for tests to count."""

    method: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclasses.dataclass
class Fault:
    """Answer the next matching requests with an error (see `fail_next`)."""

    request: str  # a verb in lower case (create, patch, ...) or an HTTP method in upper case
    plural: str
    status: int
    times: int
    name: str | None = None
    subresource: str | None = None
    """Only requests to this subresource (e.g. status); None matches the object and its subresources."""

    def matches(self, call: ApiCall) -> bool:
        wanted = self.request == call.method if self.request.isupper() else self.request == call.verb
        where = self.subresource in (None, call.path.subresource)
        return wanted and where and self.plural == call.path.plural and self.name in (None, call.name)


@dataclasses.dataclass(frozen=True)
class ApiCall:
    """An object request with everything the handlers need from it."""

    raw: aiohttp.web.BaseRequest
    path: ObjectPath
    resource: ApiResource
    verb: str
    body: bytes

    @property
    def method(self) -> str:
        return self.raw.method

    @property
    def params(self) -> Mapping[str, str]:
        return self.raw.query

    @property
    def namespace(self) -> str | None:
        return self.path.namespace

    @property
    def name(self) -> str | None:
        """The object's name: from the URL, or for a create from the body."""
        if self.path.name is not None:
            return self.path.name
        data = self.json(required=False)
        return (data.get("metadata") or {}).get("name") if isinstance(data, dict) else None

    @property
    def content_type(self) -> str:
        return self.raw.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self, *, required: bool = True) -> Any:
        if not self.body and not required:
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            if not required:
                return None
            raise invalid(self.resource, self.path.name, "the request body is not valid JSON") from None


@attrs.define(kw_only=True)
class StrictKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the real API server's semantics for objects.

    Object requests (``/api/v1/...``, ``/apis/<group>/<version>/...`` with a resource)
    are served from an ``ObjectStore``; everything else (discovery, ``/version``, custom
    kmock reactions) goes to kmock as usual. Discovery lists what the store serves,
    CRDs created through the API included.

    Not emulated: server-side apply, field validation against the schema (only pruning),
    CEL rules, admission webhooks, graceful deletion (pods and namespaces go at once, a
    namespace with its content), more than one served version per CRD, and watch bookmarks
    other than the one that ends the initial events.
    """

    crds: Sequence[Mapping[str, Any]] = ()
    builtins: Sequence[ApiResource] = BUILTIN_RESOURCES
    event_log_size: int = 1000
    keep_alive: bool = False
    """Keep connections open between requests, as a real API server does. Only where no
    client runs in the emulator's event loop (the benchmark's operators are processes of
    their own); see `__call__`."""

    store: ObjectStore = attrs.field(init=False)
    writes: list[Write] = attrs.field(factory=list, init=False)
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _delay: float = attrs.field(default=0.0, init=False)
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    """What GET .../pods/NAME/log answers, by namespace and pod (the kubelet's part)."""

    def __attrs_post_init__(self) -> None:
        # Only the scaffold's discovery routes: kmock's own object handlers never see a request.
        kmock.KubernetesScaffold.__attrs_post_init__(self)
        self.store = ObjectStore(self.builtins, event_log_size=self.event_log_size)
        for crd in self.crds:
            self.store.create(self.store.resources[CRD_KEY], None, dict(crd))
        self._sync_discovery()

    # -- test controls

    def fail_next(
        self,
        request: str,
        plural: str,
        status: int = 500,
        times: int = 1,
        name: str | None = None,
        subresource: str | None = None,
    ) -> None:
        """Answer the next `times` matching requests with an error status.

        `request` is a Kubernetes verb in lower case (create, get, list, watch, patch,
        update, delete) or an HTTP method in upper case (POST, GET, PATCH, PUT, DELETE).
        429 comes with `Retry-After: 1`, as the API server's rate limiting sends it.
        """
        self._faults.append(Fault(request, plural, status, times, name, subresource))

    def clear_faults(self) -> None:
        """Answer normally from now on."""
        self._faults.clear()

    def drop_watches(self) -> int:
        """Cut every open watch stream without a proper end; return how many there were."""
        return self.store.end_watches(StreamEnd.ABRUPT)

    def close_watches(self) -> int:
        """End every open watch stream cleanly, as the server does when `timeoutSeconds` runs out."""
        return self.store.end_watches(StreamEnd.CLEAN)

    def miss_events(self, plural: str, times: int = 1) -> None:
        """The next `times` changes of a kind are never delivered to the open watches, as an
        event lost to a watch that was re-established past it: only a fresh listing shows them."""
        self.store.miss(plural, times)

    def slow(self, seconds: float) -> None:
        """Delay every object request by this long (0 to stop)."""
        self._delay = seconds

    def compact(self) -> None:
        """Forget the event log: watches from any earlier resourceVersion get 410 Expired."""
        self.store.compact()

    # -- plain accessors for assertions (call them on the emulator's event loop)

    def get_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> Obj | None:
        resource = self._known(group, version, plural)
        found = self.store.find(resource, namespace, name)
        return copy.deepcopy(found) if found is not None else None

    def list_objects(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | str | None = None,
    ) -> list[Obj]:
        """Objects of a resource; `labels` is a selector string or a dict of required labels."""
        if isinstance(labels, Mapping):
            labels = ",".join(f"{key}={value}" for key, value in labels.items())
        selector = Selector(labels=parse_selector(labels or ""))
        return self.store.objects(self._known(group, version, plural), namespace, selector)

    def create_object(self, group: str, version: str, plural: str, body: Obj, namespace: str | None = None) -> Obj:
        """Seed an object without a request (it does not count as a write)."""
        created = self.store.create(self._known(group, version, plural), namespace, body)
        self._sync_discovery()
        return created

    def internal_errors(self) -> list[Exception]:
        """What failed inside the emulator or kmock while serving, but not as an API answer.

        kmock's own `strict` mode cannot tell these apart: it also counts the 404s its
        discovery answers for unknown groups, which Kopf asks about as a matter of course.
        """
        return [error for error in self.errors if not isinstance(error, kmock.KubernetesError)]

    def _known(self, group: str, version: str, plural: str) -> ApiResource:
        resource = self.store.resource(group, version, plural)
        if resource is None:
            raise KeyError(f"not a served resource: {group}/{version}/{plural}")
        return resource

    # -- serving

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        path = parse_object_path(raw_request.path)
        if path is None:
            response = await super().__call__(raw_request)
        else:
            response = await self._serve_object_request(raw_request, path)
        # No connection outlives its request. Kopf, stopping in this same event loop, cancels
        # every task started since it began, the server's tasks for other clients' idle
        # keep-alive connections included; the next request on such a connection would
        # then wait forever for an answer.
        if not self.keep_alive:
            response.force_close()
        return response

    async def _serve_object_request(
        self, raw_request: aiohttp.web.BaseRequest, path: ObjectPath
    ) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        self._log_request(raw_request, path, body)
        try:
            call = self._call(raw_request, path, body)
            await self._before(call)
            return await self._serve(call)
        except kmock.KubernetesError as error:
            return await self._render_error(error)
        except Exception as error:
            # A bug in the emulator itself: collect it with kmock's errors, for `internal_errors`.
            if self._errors:
                self._errors[-1].append(error)
            return await self._render_error(error)

    def _call(self, raw_request: aiohttp.web.BaseRequest, path: ObjectPath, body: bytes) -> ApiCall:
        resource = self.store.resource(path.group, path.version, path.plural)
        verb = request_verb(raw_request.method, path, raw_request.query)
        if resource is None:
            raise unknown_path()
        if verb is None:
            raise api_error(
                405, f"{raw_request.method} is not allowed here", resource=resource, reason="MethodNotAllowed"
            )
        needs_namespace = resource.namespaced and verb not in ("list", "watch")
        if (path.namespace is None and needs_namespace) or (path.namespace is not None and not resource.namespaced):
            raise unknown_path(resource)
        allowed: tuple[str, ...] = ("status",) if resource.status_subresource and verb in STATUS_VERBS else ()
        if resource.plural == "pods" and resource.group == "" and verb == "get":
            allowed += ("log",)
        if path.subresource is not None and path.subresource not in allowed:
            raise unknown_path(resource)
        return ApiCall(raw_request, path, resource, verb, body)

    def _log_request(self, raw: aiohttp.web.BaseRequest, path: ObjectPath, body: bytes) -> None:
        """Keep kmock's request log complete, as if kmock had parsed the request."""
        verb = request_verb(raw.method, path, raw.query)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw,
            method=raw.method,
            url=raw.url,
            params=dict(raw.query),
            headers=dict(raw.headers),
            body=body,
            text=body.decode(errors="replace"),
            data=data,
            action=KMOCK_ACTIONS.get(verb or ""),
            resource=kmock.resource(path.group, path.version, path.plural),
            namespace=path.namespace,
            name=path.name,
            subresource=path.subresource,
        )
        self._requests.append(request)

    async def _before(self, call: ApiCall) -> None:
        if self._delay:
            await asyncio.sleep(self._delay)
        fault = next((fault for fault in self._faults if fault.matches(call)), None)
        if fault is None:
            return
        fault.times -= 1
        if fault.times <= 0:
            self._faults.remove(fault)
        retry_after = 1 if fault.status == 429 else None
        message = f"injected failure for {call.verb} {call.path.plural}"
        raise api_error(fault.status, message, resource=call.resource, name=call.name, retry_after=retry_after)

    async def _serve(self, call: ApiCall) -> aiohttp.web.StreamResponse:
        if call.verb == "watch":
            return await self._handle_watch(call)
        if call.path.subresource == "log":
            self.store.get(call.resource, call.namespace, call.path.name or "")  # 404 for a pod that is not there
            text = self.pod_logs.get((call.namespace or "", call.path.name or ""), "")
            return aiohttp.web.Response(text=text, content_type="text/plain")
        serve = {
            "get": self._handle_get,
            "list": self._handle_list,
            "create": self._handle_create,
            "update": self._handle_update,
            "patch": self._handle_patch,
            "delete": self._handle_delete,
            "deletecollection": self._handle_delete_collection,
        }[call.verb]
        status, payload = serve(call)
        if call.verb not in ("get", "list"):
            self.writes.append(
                Write(call.method, call.path.plural, call.namespace, _name_of(payload), call.path.subresource)
            )
            self._sync_discovery()
        return aiohttp.web.json_response(payload, status=status)

    def _handle_get(self, call: ApiCall) -> tuple[int, Obj]:
        assert call.path.name is not None
        return 200, self.store.get(call.resource, call.namespace, call.path.name)

    def _handle_list(self, call: ApiCall) -> tuple[int, Obj]:
        items = self.store.objects(call.resource, call.namespace, self._selector(call))
        metadata: Obj = {"resourceVersion": str(self.store.revision)}
        try:
            page = _page(items, call.params.get("limit"), call.params.get("continue"))
        except ValueError:
            raise bad_request(call.resource, "continue: Invalid value: the continue token is malformed") from None
        if page.continue_token:
            metadata.update({"continue": page.continue_token, "remainingItemCount": page.remaining})
        return 200, _list_of(call.resource, page.items, metadata)

    def _handle_create(self, call: ApiCall) -> tuple[int, Obj]:
        return 201, self.store.create(call.resource, call.namespace, call.json())

    def _handle_update(self, call: ApiCall) -> tuple[int, Obj]:
        assert call.path.name is not None
        return 200, self.store.replace(
            call.resource, call.namespace, call.path.name, call.json(), call.path.subresource
        )

    def _handle_patch(self, call: ApiCall) -> tuple[int, Obj]:
        assert call.path.name is not None
        patch_type = _patch_type(call)
        patched = self.store.patch(
            call.resource, call.namespace, call.path.name, patch_type, call.json(), call.path.subresource
        )
        return 200, patched

    def _handle_delete(self, call: ApiCall) -> tuple[int, Obj]:
        assert call.path.name is not None
        obj, gone = self.store.delete(call.resource, call.namespace, call.path.name, _delete_options(call))
        return (200 if gone else 202), obj

    def _handle_delete_collection(self, call: ApiCall) -> tuple[int, Obj]:
        options = _delete_options(call)
        deleted = [
            self.store.delete(call.resource, obj["metadata"].get("namespace"), obj["metadata"]["name"], options)[0]
            for obj in self.store.objects(call.resource, call.namespace, self._selector(call))
        ]
        return 200, _list_of(call.resource, deleted, {"resourceVersion": str(self.store.revision)})

    async def _handle_watch(self, call: ApiCall) -> aiohttp.web.StreamResponse:
        selector = self._selector(call)
        initial_events = call.params.get("sendInitialEvents") == "true"
        since = None if initial_events else call.params.get("resourceVersion")
        watch: Watch | None = None
        try:
            backlog, watch = self.store.watch(call.resource, call.namespace, selector, since)
        except kmock.KubernetesError as error:
            if error.status != 410:
                raise
            # An expired resourceVersion is answered with 200 and one ERROR event, as the real server does.
            backlog = [{"type": "ERROR", "object": _status_of(error)}]
        if initial_events:
            backlog.append({"type": "BOOKMARK", "object": self._initial_events_end(call.resource)})
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.force_close()  # see __call__
        try:
            await response.prepare(call.raw)
            for event in backlog:
                await _write_event(response, event)
            ending = StreamEnd.CLEAN if watch is None else await self._stream(response, watch, _timeout(call))
            if ending is StreamEnd.ABRUPT and call.raw.transport is not None:
                call.raw.transport.close()
            else:
                await response.write_eof()
        except ConnectionError:
            pass  # the client has gone away: there is no one to finish the stream for
        finally:
            if watch is not None:
                self.store.unwatch(watch)
        return response

    async def _stream(self, response: aiohttp.web.StreamResponse, watch: Watch, timeout: float | None) -> StreamEnd:
        try:
            async with asyncio.timeout(timeout):
                while not isinstance(event := await watch.queue.get(), StreamEnd):
                    await _write_event(response, event)
                return event
        except TimeoutError:
            return StreamEnd.CLEAN

    def _initial_events_end(self, resource: ApiResource) -> Obj:
        annotations = {"k8s.io/initial-events-end": "true"}
        metadata = {"resourceVersion": str(self.store.revision), "annotations": annotations}
        return {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": metadata}

    def _selector(self, call: ApiCall) -> Selector:
        try:
            return Selector.from_query(call.params, call.resource.selectable_fields, call.path.name)
        except ValueError as error:
            raise bad_request(call.resource, str(error)) from None

    # -- discovery and errors

    def _sync_discovery(self) -> None:
        """Let kmock's discovery scaffold list exactly what the store serves."""
        self.resources.clear()
        for resource in self.store.resources.values():
            self.resources[kmock.resource(*resource.key)] = kmock.ResourceInfo(
                kind=resource.kind,
                singular=resource.singular or resource.kind.lower(),
                namespaced=resource.namespaced,
                verbs=set(NAMESPACED_VERBS),
                shortnames=set(resource.short_names),
                categories=set(resource.categories),
                subresources={"status"} if resource.status_subresource else set(),
            )

    async def _serve_version(self, request: kmock.Request) -> Any:
        """kmock's resource list, with what it gets wrong fixed: the core groupVersion ("/v1")
        and the verbs of subresources."""
        listing = cast(dict[str, Any], await super()._serve_version(request))
        if listing["groupVersion"].startswith("/"):
            listing["groupVersion"] = listing["groupVersion"][1:]
        for entry in listing["resources"]:
            entry["verbs"] = sorted(STATUS_VERBS if "/" in entry["name"] else entry["verbs"])
        listing["resources"].sort(key=lambda entry: entry["name"])
        return listing

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """kmock's Status rendering, with reasons in Kubernetes spelling ("NotFound", not
        "Resource Not Found") and `Retry-After` on 429."""
        if isinstance(exc, kmock.KubernetesError) and " " in (exc.reason or ""):
            exc = attrs.evolve(exc, reason=REASONS.get(exc.status, exc.reason))
        response = await super()._render_error(exc)
        if isinstance(exc, kmock.KubernetesError) and exc.status == 429:
            response.headers["Retry-After"] = str((exc.details or {}).get("retryAfterSeconds", 1))
        return response


def _name_of(payload: Obj) -> str | None:
    return (payload.get("metadata") or {}).get("name")


def _list_of(resource: ApiResource, items: list[Obj], metadata: Obj) -> Obj:
    return {"apiVersion": resource.api_version, "kind": f"{resource.kind}List", "metadata": metadata, "items": items}


class Page(NamedTuple):
    items: list[Obj]
    continue_token: str = ""
    remaining: int = 0


def _page(items: list[Obj], limit: str | None, token: str | None) -> Page:
    """One page of a list: the items after the continue token, at most `limit` of them."""
    if token:
        after = tuple(json.loads(base64.urlsafe_b64decode(token)))
        items = [obj for obj in items if _order_key(obj) > after]
    if not limit or not limit.isdigit() or int(limit) <= 0 or len(items) <= int(limit):
        return Page(items)
    page = items[: int(limit)]
    token = base64.urlsafe_b64encode(json.dumps(_order_key(page[-1])).encode()).decode()
    return Page(page, token, len(items) - len(page))


def _order_key(obj: Obj) -> tuple[str, str]:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _patch_type(call: ApiCall) -> str:
    """`merge` or `json` for the request's content type; 415 for what is not emulated."""
    match call.content_type:
        case "application/merge-patch+json":
            return "merge"
        case "application/json-patch+json":
            return "json"
        case "application/strategic-merge-patch+json" if not call.resource.custom:
            # Treated as a merge patch: the difference (merging lists by key) is not emulated.
            return "merge"
    message = f"the body of the request was in an unknown format: {call.content_type or 'none'}"
    raise api_error(415, message, resource=call.resource)


def _delete_options(call: ApiCall) -> DeleteOptions:
    body = call.json(required=False)
    body = body if isinstance(body, dict) else {}
    preconditions = body.get("preconditions") or {}
    policy = call.params.get("propagationPolicy") or body.get("propagationPolicy")
    orphan = call.params.get("orphanDependents", body.get("orphanDependents"))
    if policy is None and orphan is not None:
        policy = "Orphan" if str(orphan).lower() == "true" else "Background"
    if policy is not None and policy not in PROPAGATION_POLICIES:
        raise invalid(call.resource, call.name, f'propagationPolicy: Unsupported value: "{policy}"')
    return DeleteOptions(policy, preconditions.get("uid"), preconditions.get("resourceVersion"))


def _timeout(call: ApiCall) -> float | None:
    text = call.params.get("timeoutSeconds")
    return float(text) if text and text.replace(".", "", 1).isdigit() else None


def _status_of(error: kmock.KubernetesError) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": error.status,
        "reason": error.reason,
        "message": error.message,
        "details": error.details,
    }


async def _write_event(response: aiohttp.web.StreamResponse, event: Mapping[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")
