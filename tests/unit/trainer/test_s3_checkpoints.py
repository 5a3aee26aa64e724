"""Checkpoints in S3-compatible storage (moto in server mode on loopback): copied after each
save with the marker last, pruned to `keep`, and fetched back by an attempt in a new pod,
whose scratch starts empty. The first tests drive the save callback over checkpoint folders
laid out as the Trainer writes them (the runs that train are in tests/integration/trainer)."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kubetune.api.base import S3Location
from kubetune.contract import ExitCode
from kubetune_trainer.checkpoints import MARKER, CheckpointMirror, CompletionMarker, newest_complete
from kubetune_trainer.errors import TrainerError
from kubetune_trainer.main import run
from kubetune_trainer.outputs import checkpoint_folder, checkpoint_remote, output_folder
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.s3 import Bucket

from .conftest import KEY_ID, SECRET, memorise_spec

CREDENTIALS = {"credentialsSecret": {"name": "s3-credentials"}}


@pytest.fixture
def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )


@pytest.fixture
def bucket(client: Any) -> str:
    """A bucket of the test's own (the server lives as long as the module)."""
    name = f"checkpoints-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def _mirror(
    endpoint: str, runtime: Runtime, uri: str, keep: int = 2, uploads: bool = True, is_main: bool = True
) -> CheckpointMirror:
    location = S3Location.model_validate({"uri": uri, "endpoint": endpoint, **CREDENTIALS})
    return CheckpointMirror(Bucket.open(location, runtime), keep, uploads=uploads, is_main=is_main)


def _save(
    mirror: CheckpointMirror, folder: Path, step: int, rank: int = 0, barrier: Callable[[], object] = lambda: None
) -> Path:
    """What the Trainer writes for a checkpoint in one pod (rank 0 the state and the weights,
    every rank its RNG state), then the save callback. `barrier` stands for the other pods."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    if mirror.is_main:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (checkpoint / "adapter_model.safetensors").write_bytes(bytes(range(256)) * step)
    torch.save({"cpu": torch.random.get_rng_state()}, checkpoint / f"rng_state_{rank}.pth")
    marker = CompletionMarker(folder, mirror.is_main, barrier, mirror)
    marker.on_save(None, SimpleNamespace(global_step=step), None)
    return checkpoint


def _remote(client: Any, bucket: str, prefix: str) -> dict[str, set[str]]:
    """The checkpoint folders under a prefix, each with its files."""
    found: dict[str, set[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            folder, _, name = item["Key"].removeprefix(f"{prefix}/").partition("/")
            found.setdefault(folder, set()).add(name)
    return found


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _recorder(mirror: CheckpointMirror, operation: str) -> list[str]:
    """The keys of every `operation` request the mirror's client sends, in order."""
    keys: list[str] = []
    mirror.bucket.client.meta.events.register(
        f"before-parameter-build.s3.{operation}", lambda params, **_: keys.append(params["Key"])
    )
    return keys


# ----------------------------------------------------------------------------- where they go

S3_OUTPUT = {"pvc": None, "s3": {"uri": "s3://models/demo/", **CREDENTIALS}}


@pytest.mark.parametrize(
    ("output", "location", "override", "folder", "remote"),
    [
        ({}, None, False, "volumes/results/lora/checkpoints", None),
        (S3_OUTPUT, None, False, "work/output/checkpoints", "s3://models/demo/checkpoints"),
        (S3_OUTPUT, None, True, "out/checkpoints", None),
        (S3_OUTPUT, {"s3": {"uri": "s3://other/ckpt"}}, False, "work/checkpoints", "s3://other/ckpt"),
        ({}, {"pvc": {"claimName": "scratch", "path": "/ckpt"}}, False, "volumes/scratch/ckpt", None),
        (
            {"pvc": None, "oci": {"reference": "registry.example.com/a/demo:v1"}},
            None,
            False,
            "work/output/checkpoints",
            None,
        ),
    ],
    ids=["claim-output", "s3-output", "s3-output-run-locally", "s3-location", "claim-location", "oci-output"],
)
def test_where_checkpoints_are_written_and_copied(
    output: dict[str, Any],
    location: dict[str, Any] | None,
    override: bool,
    folder: str,
    remote: str | None,
    runtime: Runtime,
    volumes: Path,
    tmp_path: Path,
) -> None:
    spec = memorise_spec("lora", ["adapter"], output=output, checkpoint={"location": location})
    runtime = runtime if override else dataclasses.replace(runtime, output_override=None)
    root, _, rest = folder.partition("/")

    written = checkpoint_folder(spec, runtime, output_folder(spec, runtime))
    copied = checkpoint_remote(spec, runtime)

    assert written == {"volumes": volumes, "work": runtime.work, "out": tmp_path / "out"}[root] / rest
    assert (copied.uri if copied else None) == remote
    if copied is not None and location is None:  # beside the output: same endpoint, same credentials
        assert copied.model_copy(update={"uri": ""}) == spec.output.s3.model_copy(update={"uri": ""})  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- copies and fetches


def test_a_checkpoint_is_copied_with_its_marker_last(
    client: Any, bucket: str, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job")
    written = _recorder(mirror, "PutObject")

    local = _save(mirror, tmp_path / "scratch", 10)

    assert written[-1] == "job/checkpoint-10/COMPLETE"
    assert sorted(written[:-1]) == sorted(f"job/checkpoint-10/{name}" for name in _files(local) - {MARKER})
    assert _remote(client, bucket, "job") == {"checkpoint-10": _files(local)}


def test_only_the_newest_complete_checkpoints_are_kept(
    client: Any, bucket: str, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="job/checkpoint-5/trainer_state.json", Body=b"{}")  # an upload cut off
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job", keep=2)

    for step in (10, 20, 30):
        _save(mirror, tmp_path, step)

    remote = _remote(client, bucket, "job")
    assert sorted(remote) == ["checkpoint-20", "checkpoint-30"]
    assert all(MARKER in files for files in remote.values())


def test_a_new_pod_fetches_the_newest_complete_checkpoint(
    client: Any,
    bucket: str,
    endpoint: str,
    cloud_runtime: Runtime,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job", keep=3)
    old, new = tmp_path / "old-pod", tmp_path / "new-pod"
    for step in (10, 20, 30):
        _save(mirror, old, step)
    client.delete_object(Bucket=bucket, Key="job/checkpoint-30/COMPLETE")  # as if cut off before its marker

    mirror.restore(new)

    assert f"skipping s3://{bucket}/job/checkpoint-30: it was not completed (no COMPLETE marker)" in caplog.text
    assert newest_complete(new) == new / "checkpoint-20"
    assert _files(new / "checkpoint-20") == _files(old / "checkpoint-20")
    assert all((new / name).read_bytes() == (old / name).read_bytes() for name in _files(old) if "-20/" in name)
    assert not (new / "checkpoint-30").exists()


def test_an_unreadable_copy_gives_way_to_an_older_one_and_is_replaced(
    client: Any,
    bucket: str,
    endpoint: str,
    cloud_runtime: Runtime,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job")
    for step in (10, 20):
        _save(mirror, tmp_path / "old-pod", step)
    client.put_object(Bucket=bucket, Key="job/checkpoint-20/trainer_state.json", Body=b"{not json")
    client.put_object(Bucket=bucket, Key="job/checkpoint-20/stray.bin", Body=b"")
    new = tmp_path / "new-pod"

    mirror.restore(new)

    assert "skipping checkpoint checkpoint-20: unreadable trainer state" in caplog.text
    assert newest_complete(new) == new / "checkpoint-10"
    assert not (new / "checkpoint-20").exists()
    # The resumed run reaches step 20 again: its checkpoint replaces the old copy, files and all.
    _save(mirror, new, 20)
    assert _remote(client, bucket, "job")["checkpoint-20"] == _files(new / "checkpoint-20")
    state = client.get_object(Bucket=bucket, Key="job/checkpoint-20/trainer_state.json")["Body"].read()
    assert json.loads(state) == {"global_step": 20}


def test_the_ranks_of_a_pod_fetch_a_checkpoint_once(
    bucket: str, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job")
    saved = _save(mirror, tmp_path / "old-pod", 10)
    fetched = _recorder(mirror, "GetObject")
    new = tmp_path / "new-pod"

    ranks = [threading.Thread(target=mirror.restore, args=(new,)) for _ in range(3)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()

    assert sorted(fetched) == sorted(f"job/checkpoint-10/{name}" for name in _files(saved))
    assert newest_complete(new) == new / "checkpoint-10"


def test_each_pod_uploads_what_its_ranks_wrote_and_each_new_pod_fetches_it_all(
    client: Any, bucket: str, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    """Two nodes: rank 1 writes its RNG state into its own pod's scratch, and its pod's
    local rank 0 uploads it. Rank 0 marks the checkpoint once both pods have; here one
    process plays both, the second pod's part running where rank 0 waits for it."""
    uri = f"s3://{bucket}/job"
    main = _mirror(endpoint, cloud_runtime, uri, keep=1)
    other = _mirror(endpoint, cloud_runtime, uri, keep=1, is_main=False)
    pods = [tmp_path / "node-0", tmp_path / "node-1"]
    marks = _recorder(main, "PutObject")

    for step in (10, 20):
        _save(main, pods[0], step, barrier=lambda step=step: _save(other, pods[1], step, rank=1))  # type: ignore[misc]

    expected = {"trainer_state.json", "adapter_model.safetensors", "rng_state_0.pth", "rng_state_1.pth", MARKER}
    assert _remote(client, bucket, "job") == {"checkpoint-20": expected}
    assert marks[-1] == "job/checkpoint-20/COMPLETE"
    assert sorted(p.name for p in pods[1].iterdir()) == ["checkpoint-20"]  # rotated as rank 0's are
    for pod in ("new-node-0", "new-node-1"):
        main.restore(tmp_path / pod)
        assert newest_complete(tmp_path / pod) == tmp_path / pod / "checkpoint-20"
        assert _files(tmp_path / pod / "checkpoint-20") == expected


def test_a_failed_upload_is_a_warning_and_training_goes_on(
    endpoint: str, cloud_runtime: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = _mirror(endpoint, cloud_runtime, "s3://no-such-bucket/job")

    saved = _save(mirror, tmp_path, 10)

    assert (saved / MARKER).is_file()  # the local checkpoint still counts
    assert (
        "checkpoint-10 was not copied, so an attempt in a new pod cannot resume from it "
        "(s3://no-such-bucket/job/checkpoint-10: cannot write to object storage: "
    ) in caplog.text
    assert "training goes on" in caplog.text
    assert SECRET not in caplog.text


def test_a_bucket_that_cannot_be_read_stops_the_run_before_training(
    endpoint: str, cloud_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    spec = memorise_spec(
        "lora",
        ["adapter"],
        output={"pvc": None, "s3": {"uri": "s3://no-such-bucket/demo", "endpoint": endpoint, **CREDENTIALS}},
    )

    caplog.set_level(logging.INFO, logger="kubetune_trainer")

    code, summary = run(spec, cloud_runtime)

    assert code is ExitCode.FAILED
    assert summary.message.startswith("s3://no-such-bucket/demo/checkpoints: cannot read from object storage: ")
    assert "NoSuchBucket" in summary.message
    assert "data: " not in caplog.text  # stopped before tokenising, let alone loading the model
    assert SECRET not in summary.dumps() + caplog.text


def test_a_key_leading_out_of_the_checkpoint_is_refused(
    client: Any, bucket: str, endpoint: str, cloud_runtime: Runtime, tmp_path: Path
) -> None:
    client.put_object(Bucket=bucket, Key="job/checkpoint-10/COMPLETE", Body=b"{}")
    client.put_object(Bucket=bucket, Key="job/checkpoint-10/../../../escaped.txt", Body=b"planted")
    mirror = _mirror(endpoint, cloud_runtime, f"s3://{bucket}/job")

    with pytest.raises(
        TrainerError, match=r"object key '\.\./\.\./\.\./escaped.txt' leads outside .* \(a '\.\.' segment\)"
    ):
        mirror.restore(tmp_path / "pod" / "checkpoints")

    assert not list(tmp_path.rglob("escaped.txt"))
