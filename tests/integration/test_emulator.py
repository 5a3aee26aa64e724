"""The strict emulator behaves as a real API server wherever a controller can tell.

Requests go through the real `kubernetes` client (in a thread, since the emulator serves
from the test's own event loop) and through aiohttp for watch streams; the last tests run
a minimal Kopf operator through a whole round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
from kubernetes import client
from kubernetes.client import ApiException

from tests.integration.conftest import ApiServer
from tests.integration.emulator import StrictKubernetesEmulator

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
JOBS_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
CONFIGMAPS_PATH = "/api/v1/namespaces/default/configmaps"
PATCHED_OUTPUT = {"spec": {"output": {"pvc": {"path": "demo-2"}}}}


# ----------------------------------------------------------------------------- helpers


async def failure(call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and Status body of a client call that must fail."""
    with pytest.raises(ApiException) as raised:
        await asyncio.to_thread(call, *args, **kwargs)
    return raised.value.status, json.loads(raised.value.body)


@dataclasses.dataclass(frozen=True)
class FineTuneJobs:
    """FineTuneJobs in `default` through the kubernetes client, each call in a thread."""

    api: client.CustomObjectsApi

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("create_namespaced_custom_object", body)

    async def get(self, name: str = "demo") -> dict[str, Any]:
        return await self._call("get_namespaced_custom_object", name)

    async def patch(self, body: Any, name: str = "demo") -> dict[str, Any]:
        return await self._call("patch_namespaced_custom_object", name, body, **_content_type(body))

    async def patch_status(self, body: Any, name: str = "demo") -> dict[str, Any]:
        return await self._call("patch_namespaced_custom_object_status", name, body, **_content_type(body))

    async def replace(self, body: dict[str, Any], name: str = "demo") -> dict[str, Any]:
        return await self._call("replace_namespaced_custom_object", name, body)

    async def delete(self, name: str = "demo", **options: Any) -> dict[str, Any]:
        return await self._call("delete_namespaced_custom_object", name, **options)

    async def failure(self, method: str, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return await failure(getattr(self.api, method), GROUP, VERSION, "default", PLURAL, *args, **kwargs)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.api, method), GROUP, VERSION, "default", PLURAL, *args, **kwargs)


def _content_type(body: Any) -> dict[str, str]:
    """A list is a JSON patch; the client would send it as a merge patch otherwise."""
    return {"_content_type": "application/json-patch+json"} if isinstance(body, list) else {}


@pytest.fixture
def jobs(kube_client: client.ApiClient) -> FineTuneJobs:
    return FineTuneJobs(client.CustomObjectsApi(kube_client))


@pytest.fixture
def core(kube_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_client)


def configmap(
    name: str, labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None
) -> client.V1ConfigMap:
    references = [_owner_reference(owner)] if owner else None
    metadata = client.V1ObjectMeta(name=name, labels=labels, owner_references=references)
    return client.V1ConfigMap(metadata=metadata, data={"key": "value"})


def _owner_reference(owner: dict[str, Any]) -> client.V1OwnerReference:
    metadata = owner["metadata"]
    return client.V1OwnerReference(
        api_version=owner["apiVersion"], kind=owner["kind"], name=metadata["name"], uid=metadata["uid"]
    )


async def create_configmap(core: client.CoreV1Api, *args: Any, **kwargs: Any) -> dict[str, Any]:
    created = await asyncio.to_thread(core.create_namespaced_config_map, "default", configmap(*args, **kwargs))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": created.metadata.name, "uid": created.metadata.uid},
    }


@contextlib.asynccontextmanager
async def watching(apiserver: ApiServer, path: str, **params: str) -> AsyncIterator[aiohttp.StreamReader]:
    """An open watch stream on a collection URL."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(apiserver.url + path, params={"watch": "true", **params}) as response,
    ):
        assert response.status == 200
        yield response.content


async def next_event(stream: aiohttp.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), timeout=10)
    assert line, "the watch stream ended"
    return json.loads(line)


async def all_events(stream: aiohttp.StreamReader) -> list[dict[str, Any]]:
    """Every event up to the end of a stream that ends by itself."""
    return [json.loads(line) async for line in stream if line.strip()]


def version_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def with_name(body: dict[str, Any], name: str) -> dict[str, Any]:
    renamed = copy.deepcopy(body)
    renamed["metadata"]["name"] = name
    return renamed


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll until `check` holds: the operator works in its own time."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not so within {timeout}s: {what}")


# ----------------------------------------------------------------------------- creating


async def test_create_stamps_uid_generation_and_resource_version(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    first = await jobs.create(job)
    second = await jobs.create(with_name(job, "demo-b"))

    metadata = first["metadata"]
    assert uuid.UUID(metadata["uid"]) != uuid.UUID(second["metadata"]["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", metadata["creationTimestamp"])
    assert metadata["generation"] == 1
    assert version_of(second) > version_of(first)
    assert (first["apiVersion"], first["kind"]) == (f"{GROUP}/{VERSION}", "FineTuneJob")
    assert await jobs.get() == first


async def test_create_twice_is_already_exists(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    await jobs.create(job)

    code, status = await jobs.failure("create_namespaced_custom_object", job)

    assert code == 409
    assert status["kind"] == "Status"
    assert (status["status"], status["code"], status["reason"]) == ("Failure", 409, "AlreadyExists")
    assert status["details"]["name"] == "demo"


async def test_create_needs_a_name_or_generate_name(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    del job["metadata"]["name"]
    code, status = await jobs.failure("create_namespaced_custom_object", job)
    assert (code, status["reason"]) == (422, "Invalid")

    job["metadata"]["generateName"] = "demo-"
    created = await jobs.create(job)
    assert re.fullmatch(r"demo-[a-z0-9]{5}", created["metadata"]["name"])


async def test_missing_object_is_not_found(jobs: FineTuneJobs) -> None:
    code, status = await jobs.failure("patch_namespaced_custom_object", "ghost", {"spec": {}})

    assert (code, status["reason"], status["kind"]) == (404, "NotFound", "Status")


async def test_invalid_names_and_labels_are_refused(core: client.CoreV1Api) -> None:
    code, _ = await failure(core.create_namespaced_config_map, "default", configmap("Not_A_Name"))
    assert code == 422

    code, status = await failure(core.create_namespaced_config_map, "default", configmap("ok", {"model": "x" * 64}))
    assert (code, status["reason"]) == (422, "Invalid")
    assert "label value" in status["message"]


# ----------------------------------------------------------------------------- updating


async def test_stale_resource_version_conflicts_on_patch_and_put(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    stale = await jobs.create(job)
    await jobs.patch(PATCHED_OUTPUT)

    code, status = await jobs.failure("replace_namespaced_custom_object", "demo", stale)
    assert (code, status["reason"]) == (409, "Conflict")

    stale_patch = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "spec": {}}
    code, status = await jobs.failure("patch_namespaced_custom_object", "demo", stale_patch)
    assert (code, status["reason"]) == (409, "Conflict")

    fresh = await jobs.get()
    fresh["spec"]["output"]["pvc"]["path"] = "demo-3"
    assert (await jobs.replace(fresh))["spec"]["output"]["pvc"]["path"] == "demo-3"


async def test_put_replaces_a_builtin_object_and_checks_its_version(core: client.CoreV1Api) -> None:
    created = await asyncio.to_thread(core.create_namespaced_config_map, "default", configmap("settings"))
    created.data = {"key": "new"}
    replaced = await asyncio.to_thread(core.replace_namespaced_config_map, "settings", "default", created)
    assert replaced.data == {"key": "new"}

    code, _ = await failure(
        core.replace_namespaced_config_map, "settings", "default", created
    )  # its version is old now
    assert code == 409


async def test_generation_counts_spec_changes_only(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    created = await jobs.create(job)

    relabelled = await jobs.patch({"metadata": {"labels": {"team": "nlp"}}})
    with_status = await jobs.patch_status({"status": {"phase": "Running"}})
    respecified = await jobs.patch(PATCHED_OUTPUT)
    unchanged = await jobs.patch(PATCHED_OUTPUT)

    generations = [obj["metadata"]["generation"] for obj in (created, relabelled, with_status, respecified)]
    assert generations == [1, 1, 1, 2]
    assert version_of(created) < version_of(relabelled) < version_of(with_status) < version_of(respecified)
    assert unchanged == respecified  # a no-op patch writes nothing, not even a new resourceVersion


async def test_main_resource_ignores_status(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    job["status"] = {"phase": "Succeeded"}
    created = await jobs.create(job)
    assert "status" not in created

    patched = await jobs.patch({"status": {"phase": "Failed"}, **PATCHED_OUTPUT})

    assert "status" not in patched
    assert patched["spec"]["output"]["pvc"]["path"] == "demo-2"


async def test_status_subresource_ignores_everything_else(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    await jobs.create(job)

    patched = await jobs.patch_status(
        {"status": {"phase": "Running"}, "metadata": {"labels": {"a": "b"}}, **PATCHED_OUTPUT}
    )

    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"] == job["spec"]
    assert "labels" not in patched["metadata"]


async def test_pruning_drops_undeclared_fields_but_keeps_kopf_bookkeeping(
    jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    job["spec"]["typo"] = "dropped"
    job["metadata"]["notAMetaField"] = "dropped"
    created = await jobs.create(job)
    kopf_state = {"last-handled-configuration": "{}", "progress": {"handler": {"retries": 1}}}

    patched = await jobs.patch_status(
        {"status": {"phase": "Running", "undeclared": 1, "progress": {"step": 3, "bogus": 2}, "kopf": kopf_state}}
    )

    assert "typo" not in created["spec"]
    assert "notAMetaField" not in created["metadata"]
    assert patched["status"] == {"phase": "Running", "progress": {"step": 3}, "kopf": kopf_state}


async def test_merge_patch_null_deletes_a_field(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    job["metadata"]["labels"] = {"keep": "yes", "drop": "yes"}
    await jobs.create(job)

    patched = await jobs.patch({"metadata": {"labels": {"drop": None}}, "spec": {"dataset": {"format": None}}})

    assert patched["metadata"]["labels"] == {"keep": "yes"}
    assert "format" not in patched["spec"]["dataset"]


async def test_json_patch_applies_in_full_or_not_at_all(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    created = await jobs.create(job)
    version = created["metadata"]["resourceVersion"]
    replace = {"op": "replace", "path": "/spec/output/pvc/path", "value": "demo-2"}

    code, status = await jobs.failure(
        "patch_namespaced_custom_object",
        "demo",
        [replace, {"op": "test", "path": "/metadata/resourceVersion", "value": "0"}],
        _content_type="application/json-patch+json",
    )
    assert (code, status["reason"]) == (422, "Invalid")
    assert "test operation failed" in status["message"]
    assert await jobs.get() == created

    code, _ = await jobs.failure(
        "patch_namespaced_custom_object",
        "demo",
        [{"op": "remove", "path": "/spec/nothing/here"}],
        _content_type="application/json-patch+json",
    )
    assert code == 422

    patched = await jobs.patch([{"op": "test", "path": "/metadata/resourceVersion", "value": version}, replace])
    assert patched["spec"]["output"]["pvc"]["path"] == "demo-2"


async def test_strategic_merge_patch_is_for_builtins_only(
    jobs: FineTuneJobs, core: client.CoreV1Api, job: dict[str, Any]
) -> None:
    await jobs.create(job)
    await create_configmap(core, "settings")

    code, status = await jobs.failure(
        "patch_namespaced_custom_object",
        "demo",
        PATCHED_OUTPUT,
        _content_type="application/strategic-merge-patch+json",
    )
    patched = await asyncio.to_thread(core.patch_namespaced_config_map, "settings", "default", {"data": {"b": "2"}})

    assert (code, status["reason"]) == (415, "UnsupportedMediaType")  # as for custom resources in a real cluster
    assert patched.data == {"key": "value", "b": "2"}


async def test_finalizers_hold_deletion_until_they_are_removed(jobs: FineTuneJobs, job: dict[str, Any]) -> None:
    job["metadata"]["finalizers"] = ["kubetune.io/cleanup"]
    await jobs.create(job)

    await jobs.delete()  # 202 Accepted: the client reads no body from it
    held = await jobs.get()
    code, _ = await jobs.failure("patch_namespaced_custom_object", "demo", {"metadata": {"finalizers": ["x", "y"]}})

    assert held["metadata"]["deletionTimestamp"]
    assert code == 422  # no new finalizers on an object being deleted
    await jobs.patch({"metadata": {"finalizers": None}})
    code, _ = await jobs.failure("get_namespaced_custom_object", "demo")
    assert code == 404


# ----------------------------------------------------------------------------- garbage collection


async def test_background_deletion_collects_dependents(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    owner = await create_configmap(core, "owner")
    child = await create_configmap(core, "child", owner=owner)
    await create_configmap(core, "grandchild", owner=child)
    held = configmap("held", owner=owner)
    held.metadata.finalizers = ["example.com/hold"]
    await asyncio.to_thread(core.create_namespaced_config_map, "default", held)

    await asyncio.to_thread(core.delete_namespaced_config_map, "owner", "default")

    left = apiserver.emulator.list_objects("", "v1", "configmaps", "default")
    assert [obj["metadata"]["name"] for obj in left] == ["held"]
    assert left[0]["metadata"]["deletionTimestamp"]


async def test_orphan_deletion_leaves_dependents_without_the_owner(
    apiserver: ApiServer, core: client.CoreV1Api
) -> None:
    owner = await create_configmap(core, "owner")
    await create_configmap(core, "child", owner=owner)

    await asyncio.to_thread(core.delete_namespaced_config_map, "owner", "default", propagation_policy="Orphan")

    child = apiserver.emulator.get_object("", "v1", "configmaps", "default", "child")
    assert child is not None
    assert not child["metadata"].get("ownerReferences")


async def test_foreground_deletion_waits_for_dependents(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    owner = await create_configmap(core, "owner")
    await create_configmap(core, "child", owner=owner)
    held = configmap("held", owner=owner)
    held.metadata.finalizers = ["example.com/hold"]
    await asyncio.to_thread(core.create_namespaced_config_map, "default", held)

    await asyncio.to_thread(core.delete_namespaced_config_map, "owner", "default", propagation_policy="Foreground")
    waiting = apiserver.emulator.get_object("", "v1", "configmaps", "default", "owner")
    await asyncio.to_thread(core.patch_namespaced_config_map, "held", "default", {"metadata": {"finalizers": None}})

    assert waiting is not None
    assert waiting["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert apiserver.emulator.list_objects("", "v1", "configmaps", "default") == []


async def test_deleting_a_namespace_deletes_what_is_in_it(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name="team"))
    await asyncio.to_thread(core.create_namespace, namespace)
    await asyncio.to_thread(core.create_namespaced_config_map, "team", configmap("a"))
    code, _ = await failure(core.create_namespaced_config_map, "nowhere", configmap("a"))

    await asyncio.to_thread(core.delete_namespace, "team")

    assert code == 404  # no such namespace
    assert apiserver.emulator.list_objects("", "v1", "configmaps") == []


def batch_job(name: str) -> client.V1Job:
    container = client.V1Container(name="train", image="busybox")
    template = client.V1PodTemplateSpec(spec=client.V1PodSpec(containers=[container], restart_policy="Never"))
    return client.V1Job(metadata=client.V1ObjectMeta(name=name), spec=client.V1JobSpec(template=template))


@pytest.mark.parametrize(("policy", "pod_left"), [(None, True), ("Background", False)])
async def test_deleting_a_job_orphans_its_pods_unless_told_otherwise(
    apiserver: ApiServer, kube_client: client.ApiClient, policy: str | None, pod_left: bool
) -> None:
    batch, core = client.BatchV1Api(kube_client), client.CoreV1Api(kube_client)
    created = await asyncio.to_thread(batch.create_namespaced_job, "default", batch_job("train"))
    reference = client.V1OwnerReference(api_version="batch/v1", kind="Job", name="train", uid=created.metadata.uid)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="train-abcde", owner_references=[reference]),
        spec=batch_job("train").spec.template.spec,
    )
    await asyncio.to_thread(core.create_namespaced_pod, "default", pod)

    await asyncio.to_thread(batch.delete_namespaced_job, "train", "default", propagation_policy=policy)

    assert (apiserver.emulator.get_object("", "v1", "pods", "default", "train-abcde") is not None) == pod_left


# ----------------------------------------------------------------------------- listing


LABELLED = {"a": {"app": "x", "tier": "web"}, "b": {"app": "x", "tier": "db"}, "c": {"app": "y"}, "d": {}}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=x", "ab"),
        ("app==x", "ab"),
        ("app!=x", "cd"),
        ("tier", "ab"),
        ("!tier", "cd"),
        ("tier in (web,cache)", "a"),
        ("tier notin (web)", "bcd"),
        ("app=x,tier!=web", "b"),
    ],
)
async def test_label_selectors(core: client.CoreV1Api, selector: str, expected: str) -> None:
    for name, labels in LABELLED.items():
        await create_configmap(core, name, labels)

    listed = await asyncio.to_thread(core.list_namespaced_config_map, "default", label_selector=selector)

    assert "".join(item.metadata.name for item in listed.items) == expected


async def test_list_carries_kind_version_and_field_selection(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    for name in "abc":
        await create_configmap(core, name)

    async with aiohttp.ClientSession() as session:
        response = await session.get(apiserver.url + CONFIGMAPS_PATH, params={"fieldSelector": "metadata.name!=b"})
        listed = await response.json()

    assert (listed["apiVersion"], listed["kind"]) == ("v1", "ConfigMapList")
    assert int(listed["metadata"]["resourceVersion"]) == max(version_of(item) for item in listed["items"])
    assert [item["metadata"]["name"] for item in listed["items"]] == ["a", "c"]
    assert all(item["kind"] == "ConfigMap" for item in listed["items"])


async def test_resource_specific_field_selectors(core: client.CoreV1Api) -> None:
    for name, reason in (("a", "Created"), ("b", "Failed")):
        involved = client.V1ObjectReference(kind="FineTuneJob", name=f"job-{name}", namespace="default")
        event = client.CoreV1Event(metadata=client.V1ObjectMeta(name=name), involved_object=involved, reason=reason)
        await asyncio.to_thread(core.create_namespaced_event, "default", event)

    by_object = await asyncio.to_thread(
        core.list_namespaced_event, "default", field_selector="involvedObject.name=job-b"
    )
    code, status = await failure(core.list_namespaced_config_map, "default", field_selector="data.key=value")

    assert [event.reason for event in by_object.items] == ["Failed"]
    assert (code, status["reason"]) == (400, "BadRequest")


async def test_list_pages_with_limit_and_continue(core: client.CoreV1Api) -> None:
    for name in "abcde":
        await create_configmap(core, name)

    first = await asyncio.to_thread(core.list_namespaced_config_map, "default", limit=2)
    rest = await asyncio.to_thread(core.list_namespaced_config_map, "default", _continue=first.metadata._continue)

    assert [item.metadata.name for item in first.items + rest.items] == list("abcde")
    assert first.metadata.remaining_item_count == 3


# ----------------------------------------------------------------------------- watching


async def test_watch_without_version_lists_then_follows(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    created = await jobs.create(job)

    async with watching(apiserver, JOBS_PATH) as stream:
        listed = await next_event(stream)
        patched = await jobs.patch(PATCHED_OUTPUT)
        followed = await next_event(stream)

    assert (listed["type"], listed["object"]) == ("ADDED", created)
    assert (followed["type"], followed["object"]) == ("MODIFIED", patched)


async def test_watch_resumes_after_a_resource_version(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    created = await jobs.create(job)
    relabelled = await jobs.patch({"metadata": {"labels": {"team": "nlp"}}})
    respecified = await jobs.patch(PATCHED_OUTPUT)

    async with watching(apiserver, JOBS_PATH, resourceVersion=created["metadata"]["resourceVersion"]) as stream:
        replayed = [await next_event(stream), await next_event(stream)]
        await jobs.delete()
        deleted = await next_event(stream)

    assert [(e["type"], e["object"]) for e in replayed] == [("MODIFIED", relabelled), ("MODIFIED", respecified)]
    assert deleted["type"] == "DELETED"
    assert deleted["object"]["spec"] == respecified["spec"]  # the last state
    assert version_of(deleted["object"]) > version_of(respecified)


async def test_watch_can_end_its_initial_events_with_a_bookmark(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    created = await jobs.create(job)

    params = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}
    async with watching(apiserver, JOBS_PATH, **params) as stream:
        added, bookmark = await next_event(stream), await next_event(stream)

    assert (added["type"], added["object"]) == ("ADDED", created)
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_watch_from_an_expired_version_is_410(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    created = await jobs.create(job)
    await jobs.patch(PATCHED_OUTPUT)
    apiserver.emulator.compact()

    async with watching(apiserver, JOBS_PATH, resourceVersion=created["metadata"]["resourceVersion"]) as stream:
        events = await all_events(stream)

    assert [event["type"] for event in events] == ["ERROR"]
    assert events[0]["object"]["kind"] == "Status"
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")


async def test_watch_follows_selectors_and_ends_after_its_timeout(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    async with watching(apiserver, CONFIGMAPS_PATH, labelSelector="app=x", timeoutSeconds="1") as stream:
        await create_configmap(core, "matching", {"app": "x"})
        await create_configmap(core, "other", {"app": "y"})
        await asyncio.to_thread(
            core.patch_namespaced_config_map, "matching", "default", {"metadata": {"labels": {"app": "z"}}}
        )
        events = await all_events(stream)

    # An object that stops matching leaves the watch as DELETED, as with the real watch cache.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "matching"),
        ("DELETED", "matching"),
    ]


async def test_drop_watches_cuts_open_streams(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    await create_configmap(core, "a")

    async with watching(apiserver, CONFIGMAPS_PATH) as stream:
        await next_event(stream)
        assert apiserver.emulator.drop_watches() == 1
        with pytest.raises(aiohttp.ClientPayloadError):
            await stream.read()


# ----------------------------------------------------------------------------- faults and logs


async def test_fail_next_answers_the_chosen_error(apiserver: ApiServer, core: client.CoreV1Api) -> None:
    apiserver.emulator.fail_next("create", "configmaps", status=429)

    with pytest.raises(ApiException) as raised:
        await asyncio.to_thread(core.create_namespaced_config_map, "default", configmap("a"))
    await create_configmap(core, "a")

    assert raised.value.status == 429
    assert raised.value.headers["Retry-After"] == "1"
    assert json.loads(raised.value.body)["reason"] == "TooManyRequests"
    assert apiserver.emulator.writes == [("POST", "configmaps", "default", "a", None)]


async def test_fail_next_counts_down_matching_requests(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    await jobs.create(job)
    apiserver.emulator.fail_next("PATCH", PLURAL, status=500, times=2, name="demo")

    codes = [(await jobs.failure("patch_namespaced_custom_object", "demo", PATCHED_OUTPUT))[0] for _ in range(2)]
    patched = await jobs.patch(PATCHED_OUTPUT)

    assert codes == [500, 500]
    assert patched["metadata"]["generation"] == 2


async def test_no_connection_outlives_its_request(apiserver: ApiServer) -> None:
    """Kopf, stopping in the test's event loop, cancels every task started since it began,
    the server's tasks for other clients' idle keep-alive connections included: a client
    would then wait forever on such a connection. So the emulator keeps none open."""
    async with aiohttp.ClientSession() as session:
        for path in (CONFIGMAPS_PATH, "/api/v1", f"{CONFIGMAPS_PATH}/absent"):
            async with session.get(apiserver.url + path) as response:
                assert response.headers["Connection"] == "close"


async def test_a_keep_alive_emulator_keeps_connections_for_processes_of_their_own() -> None:
    """The operator benchmark's operators are processes of their own: there the emulator
    keeps connections open between requests, as a real API server does."""
    async with (
        StrictKubernetesEmulator(keep_alive=True) as emulator,
        kmock.Server(emulator) as server,
        aiohttp.ClientSession() as session,
    ):
        for path in ("/api/v1", "/api/v1/namespaces/default/configmaps"):
            async with session.get(f"{server.url}{path}") as response:
                assert response.status == 200
                assert response.headers.get("Connection", "keep-alive") != "close"


# ----------------------------------------------------------------------------- discovery and CRDs

WIDGETS_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


async def discover(apiserver: ApiServer, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(apiserver.url + path) as response:
        return response.status, await response.json()


async def test_discovery_lists_the_status_subresource(apiserver: ApiServer) -> None:
    _, listing = await discover(apiserver, f"/apis/{GROUP}/{VERSION}")

    resources = {entry["name"]: entry for entry in listing["resources"]}
    assert resources[PLURAL]["kind"] == "FineTuneJob"
    assert resources[PLURAL]["namespaced"] is True
    assert "watch" in resources[PLURAL]["verbs"]
    assert f"{PLURAL}/status" in resources


async def test_crd_created_through_the_api_is_discovered_and_served(
    apiserver: ApiServer, kube_client: client.ApiClient
) -> None:
    api = client.CustomObjectsApi(kube_client)
    code, _ = await discover(apiserver, "/apis/example.com/v1")
    assert code == 404

    await asyncio.to_thread(
        api.create_cluster_custom_object, "apiextensions.k8s.io", "v1", "customresourcedefinitions", WIDGETS_CRD
    )
    _, groups = await discover(apiserver, "/apis")
    _, listing = await discover(apiserver, "/apis/example.com/v1")
    widget = {"metadata": {"name": "w"}, "spec": {"size": 3, "colour": "pruned"}}
    created = await asyncio.to_thread(
        api.create_namespaced_custom_object, "example.com", "v1", "default", "widgets", widget
    )

    assert "example.com" in [group["name"] for group in groups["groups"]]
    assert {entry["name"] for entry in listing["resources"]} == {"widgets", "widgets/status"}
    assert created["spec"] == {"size": 3}

    await asyncio.to_thread(
        api.delete_cluster_custom_object,
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "widgets.example.com",
    )
    code, _ = await discover(apiserver, "/apis/example.com/v1")
    assert code == 404


# ----------------------------------------------------------------------------- a Kopf round trip


@contextlib.asynccontextmanager
async def running_operator(registry: kopf.OperatorRegistry) -> AsyncIterator[None]:
    """A Kopf operator in this event loop, watching `default`, stopped on the way out."""
    settings = kopf.OperatorSettings()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.watching.server_timeout = 2  # short watch calls: Kopf resumes from its last resourceVersion often
    stop, ready = asyncio.Event(), asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            namespaces=["default"],
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=20)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(operator, timeout=20)


async def test_kopf_handles_create_and_update_exactly_once(
    apiserver: ApiServer, jobs: FineTuneJobs, job: dict[str, Any]
) -> None:
    registry = kopf.OperatorRegistry()
    created: list[str] = []
    updated: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    # Kopf stores a result at status.<handler id>, and the CRD prunes undeclared status
    # fields: the id names a declared one, or the result would vanish.
    @kopf.on.create(GROUP, VERSION, PLURAL, id="phase", registry=registry)
    async def create_fn(name: str, **_: Any) -> str:
        created.append(name)
        return "Pending"

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def update_fn(name: str, **_: Any) -> None:
        updated.append(name)

    def diff_base() -> str:
        stored = apiserver.emulator.get_object(GROUP, VERSION, PLURAL, "default", "demo") or {}
        return str(stored.get("status", {}).get("kopf", {}).get("last-handled-configuration", ""))

    async with running_operator(registry):
        await jobs.create(job)
        await eventually(diff_base, "Kopf stored its diff-base under status.kopf")
        assert (await jobs.get())["status"]["phase"] == "Pending"

        apiserver.emulator.drop_watches()  # Kopf must resume where it was, not replay the creation
        await jobs.patch(PATCHED_OUTPUT)
        await eventually(lambda: "demo-2" in diff_base(), "Kopf stored the updated diff-base")

    assert created == ["demo"]
    assert updated == ["demo"]
    assert json.loads(diff_base())["spec"]["output"]["pvc"]["path"] == "demo-2"
    assert [w for w in apiserver.emulator.writes if w.method == "POST" and w.plural == PLURAL] == [
        ("POST", PLURAL, "default", "demo", None)
    ]
