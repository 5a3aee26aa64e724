"""The cluster commands (`kubetune submit|list|status|watch|logs|suspend|resume|delete`):
their API calls in `Remote`, and what they print in pure functions over the objects read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubetune.api import ConditionType, Phase
from kubetune.api.problems import problems_from_validation_error
from kubetune.api.status import FineTuneJobStatus, Progress
from kubetune.controller import names
from kubetune.controller.builders import ATTEMPT_LABEL, JOB_LABEL, ROLE_LABEL
from kubetune.controller.cluster import KINDS, Rest
from kubetune.controller.observe import pod_state

Manifest = dict[str, Any]


class NotFound(LookupError):
    pass


class UnreadableStatus(ValueError):
    """A FineTuneJob's status that the API's model does not read."""


def connect(context: str | None = None) -> tuple[ApiClient, str]:
    """A client for the kubeconfig's current (or named) context, and that context's namespace."""
    from kubernetes import config

    # KUBECONFIG as it is now (the client library reads it once, when first imported).
    path = os.environ.get("KUBECONFIG") or None
    contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    client = config.new_client_from_config(config_file=path, context=context)  # type: ignore[no-untyped-call]
    return client, (chosen or {}).get("context", {}).get("namespace") or "default"


@dataclass
class Remote:
    client: ApiClient
    namespace: str

    @property
    def rest(self) -> Rest:
        return Rest(self.client)

    # ------------------------------------------------------------------------- jobs

    def submit(self, manifest: Manifest) -> str:
        """Create the object, or replace what it says (its status stays). Returns what happened."""
        kind = KINDS[manifest["kind"]]
        name = manifest["metadata"]["name"]
        try:
            current = self.rest.call("GET", kind.path(self.namespace, name))
        except ApiException as error:
            if error.status != 404:
                raise
            self.rest.call("POST", kind.path(self.namespace), body=_placed(manifest, self.namespace))
            return "created"
        if _same(current, manifest):
            return "unchanged"
        replacement = _placed(manifest, self.namespace)
        replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.rest.call("PUT", kind.path(self.namespace, name), body=replacement)
        return "configured"

    def jobs(self, all_namespaces: bool = False) -> list[Manifest]:
        """The namespace's FineTuneJobs by name; every namespace's by namespace and name."""
        path = KINDS["FineTuneJob"].path(None if all_namespaces else self.namespace)
        items: list[Manifest] = self.rest.call("GET", path).get("items") or []
        return sorted(items, key=lambda j: (j["metadata"].get("namespace") or "", j["metadata"]["name"]))

    def job(self, name: str) -> Manifest:
        try:
            return self.rest.call("GET", KINDS["FineTuneJob"].path(self.namespace, name))
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"finetunejob {name} not found in namespace {self.namespace}") from None
            raise

    def events(self, name: str) -> list[Manifest]:
        query = [("fieldSelector", f"involvedObject.name={name},involvedObject.kind=FineTuneJob")]
        items = self.rest.call("GET", KINDS["Event"].path(self.namespace), query=query).get("items") or []
        mine = [e for e in items if (e.get("involvedObject") or {}).get("name") == name]
        return sorted(mine, key=lambda e: e.get("lastTimestamp") or e["metadata"].get("creationTimestamp") or "")

    def set_suspend(self, name: str, suspend: bool) -> None:
        self.job(name)
        path = KINDS["FineTuneJob"].path(self.namespace, name)
        self.rest.call("PATCH", path, body={"spec": {"suspend": suspend}}, content_type="application/merge-patch+json")

    def delete(self, name: str) -> None:
        self.job(name)
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        self.rest.call("DELETE", KINDS["FineTuneJob"].path(self.namespace, name), body=options)

    # ------------------------------------------------------------------------- logs

    def rank_pod(self, name: str, rank: int, attempt: int | None = None) -> str:
        """The pod of the given node rank in the attempt (the newest by default; the preflight
        before the first). The operator keeps a few failed attempts' Jobs for these logs."""
        status = job_status(self.job(name))
        newest = status.attempts + status.preemptions
        if attempt is not None and not 1 <= attempt <= newest:
            raise NotFound(f"{name} has no attempt {attempt} (attempts 1 to {newest} were started)")
        attempt = newest if attempt is None else attempt
        selector = f"{JOB_LABEL}={names.label_value(name)}," + (
            f"{ATTEMPT_LABEL}={attempt},{ROLE_LABEL}=train" if attempt else f"{ROLE_LABEL}=preflight"
        )
        pods = self.rest.call("GET", KINDS["Pod"].path(self.namespace), query=[("labelSelector", selector)])
        matching = [p for p in pods.get("items") or [] if pod_state(p).index == rank]
        if not matching:
            which = f"attempt {attempt}" if attempt else "the preflight"
            raise NotFound(f"no pod of rank {rank} in {which} of {name} (yet, or any more)")
        newest = max(matching, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return str(newest["metadata"]["name"])

    def logs(self, pod: str, follow: bool) -> Iterator[bytes]:
        query = [("container", "trainer")] + ([("follow", "true")] if follow else [])
        serialized = self.client.param_serialize(
            "GET",
            KINDS["Pod"].path(self.namespace, pod, "log"),
            query_params=query,
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*serialized, _request_timeout=None)
        raw = response.response
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            raise ApiException(http_resp=response)
        yield from raw.stream(4096, decode_content=True)


def _placed(manifest: Manifest, namespace: str) -> Manifest:
    metadata = {**manifest["metadata"], "namespace": namespace}
    return {**manifest, "metadata": metadata}


def _same(current: Manifest, manifest: Manifest) -> bool:
    keys = [k for k in manifest if k not in ("apiVersion", "kind", "metadata", "status")]
    meta, wanted = current.get("metadata") or {}, manifest.get("metadata") or {}
    return all(current.get(k) == manifest[k] for k in keys) and all(
        (meta.get(k) or {}) == (wanted.get(k) or {}) for k in ("labels", "annotations")
    )


# ----------------------------------------------------------------------------- what is printed


def age(created: str | None, now: datetime) -> str:
    """Like kubectl: 45s, 12m, 3h, 5d."""
    if not created:
        return "-"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def job_status(job: Manifest) -> FineTuneJobStatus:
    """The job's status as the API's model (an empty one before the operator wrote any).
    Raises UnreadableStatus naming each field that does not validate."""
    try:
        return FineTuneJobStatus.model_validate(job.get("status") or {})
    except ValidationError as error:
        problems = "; ".join(str(p) for p in problems_from_validation_error(error, ("status",)))
        name = (job.get("metadata") or {}).get("name", "?")
        raise UnreadableStatus(f"finetunejob {name}: {problems} (an operator of another version wrote it?)") from None


def job_table(jobs: Sequence[Manifest], now: datetime | None = None, namespaces: bool = False) -> str:
    """Like `kubectl get`: with a NAMESPACE column first when the jobs come from every namespace."""
    now = now or datetime.now(UTC)
    rows = [["NAMESPACE"] * namespaces + ["NAME", "PHASE", "METHOD", "MODEL", "PROGRESS", "LOSS", "AGE"]]
    for job in jobs:
        status, spec = job_status(job), job.get("spec") or {}
        progress = status.progress or Progress()
        rows.append(
            [job["metadata"].get("namespace") or "-"] * namespaces
            + [
                job["metadata"]["name"],
                status.phase.value,
                # The method in training; the spec's only before the job has started (an edit
                # after the start is not applied).
                status.method.value if status.method else (spec.get("method") or {}).get("type", "-"),
                status.model or "-",
                f"{progress.percent:.0f}%" if progress.percent is not None else "-",
                f"{progress.loss:.4f}" if progress.loss is not None else "-",
                age(job["metadata"].get("creationTimestamp"), now),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def job_report(job: Manifest, events: Sequence[Manifest], now: datetime | None = None) -> str:
    """`kubetune status NAME`: phase, conditions, progress, output and the last events."""
    now = now or datetime.now(UTC)
    status = job_status(job)
    retries = f", preflight retries: {status.preflight_retries}" if status.preflight_retries else ""
    lines = [
        f"Name:      {job['metadata']['name']}",
        f"Namespace: {job['metadata'].get('namespace', '')}",
        f"Phase:     {status.phase.value}",
        f"Model:     {status.model or '-'}",
        f"Attempts:  {status.attempts} (preemptions: {status.preemptions}{retries})",
    ]
    if status.progress:
        lines.append(f"Progress:  {progress_line(status.progress)}")
    if status.metrics:
        lines.append("Metrics:   " + "  ".join(f"{name} {value:.4g}" for name, value in sorted(status.metrics.items())))
    if status.output:
        formats = ", ".join(f.value for f in status.output.formats)
        lines.append(f"Output:    {status.output.location} ({formats})")
    lines.append("Conditions:")
    for condition in status.conditions:
        message = f" - {condition.message}" if condition.message else ""
        lines.append(f"  {condition.type.value:<10} {condition.status.value:<6} {condition.reason}{message}")
    lines.append("Events:")
    for event in list(events)[-10:]:
        when = age(event.get("lastTimestamp") or event["metadata"].get("creationTimestamp"), now)
        lines.append(f"  {when:>4} {event.get('type', ''):<8} {event.get('reason', ''):<18} {event.get('message', '')}")
    if not events:
        lines.append("  <none>")
    return "\n".join(lines)


def progress_line(progress: Progress | None, width: int = 24) -> str:
    """step/total as a bar, with loss, reward accuracy (a preference objective), tokens/s and ETA."""
    progress = progress or Progress()
    step, total = progress.step, progress.total_steps
    parts = []
    if total:
        filled = int(width * min(step, total) / total)
        parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total}")
    else:
        parts.append(f"step {step}")
    for value, label, fmt in (
        (progress.loss, "loss", ".4f"),
        (progress.eval_loss, "eval", ".4f"),
        (progress.reward_accuracy, "reward accuracy", ".2f"),
        (progress.tokens_per_second, "tok/s", ".0f"),
    ):
        if value is not None:
            parts.append(f"{label} {value:{fmt}}")
    if progress.eta is not None:
        parts.append(f"eta {progress.eta.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    return "  ".join(parts)


def finished(status: FineTuneJobStatus) -> Phase | None:
    return status.phase if status.phase.finished else None


def failure_message(status: FineTuneJobStatus) -> str:
    failed = next((c for c in status.conditions if c.type is ConditionType.FAILED), None)
    if failed is None:
        return "Failed"
    return f"{failed.reason}: {failed.message}".rstrip(": ")
