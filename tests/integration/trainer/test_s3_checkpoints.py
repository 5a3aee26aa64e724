"""Checkpoints in S3-compatible storage (moto in server mode on loopback), with real runs: a
run stopped by SIGTERM resumes in a new pod from the bucket, and two pods share a location."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import ExitCode, RunSummary
from kubetune_trainer.checkpoints import MARKER
from tests.unit.trainer.test_s3_checkpoints import CREDENTIALS, _files, _remote, bucket, client

from .conftest import KEY_ID, SECRET, Launched, _free_port, launch, memorise_spec, summary_in

__all__ = ["bucket", "client"]


STEPS = 30


def _wait_for_copy(client: Any, bucket: str, prefix: str, process: Launched, log: Path) -> int:
    """The step of the first checkpoint marked complete in the bucket."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = _remote(client, bucket, prefix)
        done = [int(name.removeprefix("checkpoint-")) for name, files in found.items() if MARKER in files]
        if done:
            return max(done)
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError("no checkpoint reached the bucket")


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_in_a_new_pod_from_the_bucket(
    client: Any, bucket: str, endpoint: str, volumes: Path, tmp_path: Path
) -> None:
    output = {"uri": f"s3://{bucket}/demo", "endpoint": endpoint, **CREDENTIALS}
    spec = memorise_spec(
        "lora",
        ["adapter"],
        training={"maxSteps": STEPS, "loggingInterval": 10},
        checkpoint={"intervalSteps": 10, "keep": 1},
        output={"pvc": None, "s3": output},
    )
    secret = tmp_path / "secrets" / "s3-credentials"
    secret.mkdir(parents=True)
    (secret / "AWS_ACCESS_KEY_ID").write_text(KEY_ID)
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(SECRET)
    pod = {"KUBETUNE_OUTPUT": "", "KUBETUNE_SECRETS": str(tmp_path / "secrets")}
    first, second = tmp_path / "first-pod", tmp_path / "second-pod"

    process = launch(spec, volumes, first, env=pod)
    _wait_for_copy(client, bucket, "demo/checkpoints", process, first / "log.txt")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == ExitCode.INTERRUPTED, (first / "log.txt").read_text()[-3000:]
    message = str(summary_in(first, "termination-log").message)
    stopped = f"checkpoint-{int(message.split('at step ')[1].split(';')[0])}"
    # The checkpoint SIGTERM asked for reached the bucket before the process exited.
    local = first / "work" / "output" / "checkpoints" / stopped
    assert _remote(client, bucket, "demo/checkpoints") == {stopped: _files(local)}

    process = launch(spec, volumes, second, env=pod)
    assert process.wait(timeout=300) == ExitCode.OK, (second / "log.txt").read_text()[-3000:]

    log = (second / "log.txt").read_text()
    assert f"resuming from {second / 'work' / 'output' / 'checkpoints' / stopped}" in log
    summary = RunSummary.model_validate_json(client.get_object(Bucket=bucket, Key="demo/summary.json")["Body"].read())
    assert summary.metrics is not None and summary.metrics.steps == STEPS
    assert sorted(_remote(client, bucket, "demo/checkpoints")) == [f"checkpoint-{STEPS}"]
    assert SECRET not in log + (first / "log.txt").read_text()


@pytest.mark.slow
def test_two_nodes_share_a_checkpoint_location_of_their_own(
    client: Any, bucket: str, endpoint: str, volumes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two single-process pods on "different nodes" (separate scratch folders), the output on
    a claim and the checkpoints in a bucket, reached with the pods' own identity (here, the
    environment). Each pod uploads its rank's RNG state; new pods both resume from them."""
    spec = memorise_spec(
        "lora",
        ["adapter"],
        distributed={"strategy": "ddp"},
        training={"maxSteps": 10, "perDeviceBatchSize": 2},
        checkpoint={"intervalSteps": 10, "location": {"s3": {"uri": f"s3://{bucket}/ckpt", "endpoint": endpoint}}},
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)

    def attempt(name: str) -> list[Path]:
        port = str(_free_port())
        folders = [tmp_path / f"{name}-node-{rank}" for rank in (0, 1)]
        ranks = {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
        processes = [
            launch(spec, volumes, folder, env=ranks | {"RANK": str(rank), "MASTER_PORT": port})
            for rank, folder in enumerate(folders)
        ]
        for process, folder in zip(processes, folders, strict=True):
            assert process.wait(timeout=300) == ExitCode.OK, (folder / "log.txt").read_text()[-3000:]
        return folders

    first = attempt("first")
    remote = _remote(client, bucket, "ckpt")
    assert {"trainer_state.json", "rng_state_0.pth", "rng_state_1.pth", MARKER} <= remote["checkpoint-10"]
    assert _files(first[1] / "work" / "checkpoints" / "checkpoint-10") == {"rng_state_1.pth"}

    second = attempt("second")
    for rank, folder in enumerate(second):
        log = (folder / "log.txt").read_text()
        assert f"resuming from {folder / 'work' / 'checkpoints' / 'checkpoint-10'}" in log
        assert (folder / "work" / "checkpoints" / "checkpoint-10" / f"rng_state_{rank}.pth").is_file()
