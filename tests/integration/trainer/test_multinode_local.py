"""What the operator renders is what the trainer needs: the training Job of a two-node
DeepSpeed ZeRO-3 FineTuneJob, its container command run as two local processes with the
environment each pod would get (completion index, rank 0's host name resolving to this
machine through a private /etc/hosts), forms one process group of two and trains."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import parse_finetunejob
from kubetune.contract import ExitCode
from kubetune.controller import names
from kubetune.controller.builders import Context, build_config_map, build_training_job
from kubetune.controller.settings import Settings

from ..trainer.conftest import _free_port
from .conftest import summary_in, training_losses

pytestmark = pytest.mark.slow

LOCAL_PATHS = ("KUBETUNE_WORK", "KUBETUNE_CONFIGMAPS", "KUBETUNE_SECRETS", "HOME", "HF_HOME", "TRITON_CACHE_DIR")


def _private_hosts_supported() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(
    shutil.which("unshare") is None or not _private_hosts_supported(),
    reason="needs unshare -m (root) to give each local 'pod' its own /etc/hosts",
)
def test_rendered_two_node_zero3_job_trains_as_two_local_pods(volumes: Path, tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    for claim in ("models", "data"):
        (claims / claim).symlink_to(volumes / claim)
    body: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "ml"},
        "spec": {
            "model": {"pvc": {"claimName": "models", "path": "tiny-phi3"}},
            "dataset": {"pvc": {"claimName": "data", "path": "train.jsonl"}, "maxSeqLength": 128, "preflight": False},
            "method": {"type": "lora"},
            "training": {
                "maxSteps": 40,
                "learningRate": 5e-3,
                "perDeviceBatchSize": 2,
                "loggingInterval": 10,
                "optimizer": "adamw",
            },
            "distributed": {"strategy": "deepspeed", "deepspeed": {"stage": 3}},
            "resources": {"nodes": 2, "accelerators": 0},
            "output": {"pvc": {"claimName": "results", "path": "demo", "readWriteMany": True}},
        },
    }
    context = Context(parse_finetunejob(body), Settings())
    job = build_training_job(context, attempt=1)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(build_config_map(context)["data"]["spec.json"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    rendered_env = {e["name"]: e["value"] for e in container["env"]}
    hosts = tmp_path / "hosts"
    # Like the kubelet's /etc/hosts in a pod: the pod's own name, plus what cluster DNS would answer.
    hosts.write_text(f"127.0.0.1 localhost {socket.gethostname()}\n127.0.0.1 {names.rank0_host('demo', 1)}\n")
    port = str(_free_port())

    pods = []
    for index in range(job["spec"]["completions"]):
        pod_dir = tmp_path / f"pod-{index}"
        env = (
            os.environ
            | rendered_env
            | {
                "JOB_COMPLETION_INDEX": str(index),  # set by Kubernetes in an Indexed Job's pods
                "KUBETUNE_SPEC": str(spec_file),
                "KUBETUNE_VOLUMES": str(claims),
                "KUBETUNE_TERMINATION_LOG": str(pod_dir / "termination-log"),
                "KUBETUNE_MASTER_PORT": port,  # a free port instead of 29500, so parallel runs cannot clash
                "KUBETUNE_PROGRESS_PORT": "0",
                "OMP_NUM_THREADS": "1",
            }
            | {key: str(pod_dir / key.lower()) for key in LOCAL_PATHS}
        )
        command = [sys.executable if part == "python" else part for part in container["command"]]
        script = f'mount --bind "{hosts}" /etc/hosts && exec "$@"'
        log = (tmp_path / f"pod-{index}.log").open("wb")
        pods.append(
            subprocess.Popen(["unshare", "-m", "sh", "-c", script, "pod", *command], env=env, stdout=log, stderr=log)
        )

    codes = [pod.wait(timeout=600) for pod in pods]

    logs = "\n".join((tmp_path / f"pod-{i}.log").read_text()[-3000:] for i in range(len(pods)))
    assert codes == [ExitCode.OK, ExitCode.OK], logs
    summary = summary_in(claims / "results" / "demo")
    assert summary.engine is not None
    assert (summary.engine.world_size, summary.engine.zero_stage) == (2, 3)
    losses = training_losses(summary)
    assert losses[-1] < losses[0] / 5, losses
    assert "--node-rank=1" in (tmp_path / "pod-1.log").read_text()
    # Each pod starts DeepSpeed without compiling an op (its home folder would be new in a cluster).
    assert not any("built successfully" in (tmp_path / f"pod-{i}.log").read_text() for i in range(len(pods)))
