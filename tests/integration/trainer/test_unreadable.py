"""A file on a volume that the trainer may not read (a claim written by another user) is
reported as that: permission denied, which file, whose it is, not "No such file or directory".

Tests run as root here, and root reads any file whatever its mode. So the reads run in a
child process that file permissions bind: the locked files belong to another uid with mode
0600, and the child, still root, drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its
capability bounding set before it starts, so the kernel refuses it as it refuses any other
user (EACCES). Run as another user, the files are made mode 0000 and no child setting is
needed. The child runs the trainer's own code on the locked files.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.trainer.conftest import chat_rows, write_jsonl

pytestmark = [pytest.mark.integration]

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
OTHER_USER = 65534

CHILD = """
import json, os, sys
from pathlib import Path
from kubetune.api import Precision, parse_finetunejob
from kubetune.api.resource import dump_spec
from kubetune_trainer.checkpoints import newest_complete
from kubetune_trainer.data.sources import source_rows
from kubetune_trainer.main import run
from kubetune_trainer.preflight import main as preflight_main
from kubetune_trainer.model import load_model, resolve_source
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.warm import warm_start_folder
from kubetune_trainer.stores.secrets import secret_value

root = Path(sys.argv[1])
runtime = Runtime.from_env({"KUBETUNE_VOLUMES": str(root / "volumes"), "KUBETUNE_WORK": str(root / "work"),
                            "KUBETUNE_SECRETS": str(root / "secrets")})
job = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "demo"}, "spec": {
    "model": {"pvc": {"claimName": "models", "path": "tiny"}},
    "dataset": {"pvc": {"claimName": "data", "path": "chat"}},
    "method": {"type": "lora"}, "training": {"warmStart": {"pvc": {"claimName": "adapters", "path": "v1"}}},
    "output": {"pvc": {"claimName": "results", "path": "demo"}}}}
spec = parse_finetunejob(job).spec

def model():
    load_model(spec, resolve_source(spec, runtime), Precision.FP32, runtime)

def output():
    body = {**job, "spec": {**job["spec"], "model": {"pvc": {"claimName": "models", "path": "open"}},
            "dataset": {"pvc": {"claimName": "data", "path": "open"}}, "training": {"maxSteps": 1},
            "resources": {"accelerators": 0}, "output": {"pvc": {"claimName": "locked", "path": "demo"}}}}
    code, summary = run(parse_finetunejob(body).spec, runtime)
    raise RuntimeError(f"exit {int(code)} {summary.reason}: {summary.message}")

def preflight():
    body = {**job, "spec": {**job["spec"], "model": {"pvc": {"claimName": "models", "path": "open"}},
            "dataset": {"pvc": {"claimName": "data", "path": "open"}}, "training": {},
            "output": {"pvc": {"claimName": "locked", "path": "demo"}}}}
    (root / "spec.json").write_text(dump_spec(parse_finetunejob(body).spec))
    os.environ.update({"KUBETUNE_SPEC": str(root / "spec.json"), "KUBETUNE_VOLUMES": str(root / "volumes"),
                       "KUBETUNE_WORK": str(root / "work"), "KUBETUNE_TERMINATION_LOG": str(root / "preflight-log")})
    try:
        preflight_main()
    except SystemExit as exit:
        summary = json.loads((root / "preflight-log").read_text())
        raise RuntimeError(f"exit {exit.code} {summary['reason']}: {summary['message']}") from None

cases = {
    "model": model,
    "dataset": lambda: list(source_rows(spec.dataset, runtime)),
    "warm start": lambda: warm_start_folder(spec, runtime),
    "checkpoint": lambda: newest_complete(root / "volumes" / "results" / "demo" / "checkpoints"),
    "secret": lambda: secret_value(runtime, "hub", "token"),
    "output": output,
    "preflight": preflight,
}
found = {}
for name, case in cases.items():
    try:
        case()
        found[name] = "no error"
    except Exception as error:
        found[name] = f"{type(error).__name__}: {error}"
print(json.dumps(found))
"""


def _lock(path: Path, mode: int = 0o600) -> None:
    """Make `path` another user's, with `mode`, which lets the child read it (0600: no; 0755:
    a folder it may read, not write). Run as another user than root, the tests' own files
    lose the permissions the owner would have had beyond `mode`'s others' ones."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_USER, OTHER_USER)
        path.chmod(mode)
    else:
        path.chmod(mode & 0o007 | (mode & 0o007) << 3 | (mode & 0o007) << 6)


def _bound_by_file_permissions() -> None:
    """In the child, before it runs Python: root without the capabilities that override file modes."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def reports(volumes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("locked")
    model = shutil.copytree(volumes / "models" / "tiny-phi3", root / "volumes" / "models" / "tiny")
    data = write_jsonl(root / "volumes" / "data" / "chat" / "train.jsonl", chat_rows())
    adapter = root / "volumes" / "adapters" / "v1"
    adapter.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text("{}")
    checkpoint = root / "volumes" / "results" / "demo" / "checkpoints" / "checkpoint-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("{}")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    shutil.copytree(volumes / "models" / "tiny-phi3", root / "volumes" / "models" / "open")
    write_jsonl(root / "volumes" / "data" / "open" / "train.jsonl", chat_rows())
    (root / "volumes" / "locked").mkdir()
    _lock(root / "volumes" / "locked", mode=0o755)
    (root / "secrets" / "hub").mkdir(parents=True)
    (root / "secrets" / "hub" / "token").write_text("hf_token")
    for file in (
        model / "model.safetensors",
        data,
        adapter / "adapter_model.safetensors",
        checkpoint / "trainer_state.json",
        root / "secrets" / "hub" / "token",
    ):
        _lock(file)
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(root)],
            preexec_fn=_bound_by_file_permissions,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot start a process bound by file permissions here: {error}")
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("case", "error", "file"),
    [
        ("model", "InvalidSpec: model models:tiny", "models/tiny/model.safetensors"),
        ("dataset", "InvalidData: dataset", "data/chat/train.jsonl"),
        ("warm start", "InvalidSpec: warm start from adapters:v1", "adapters/v1/adapter_model.safetensors"),
        ("checkpoint", "InvalidSpec: checkpoint", "checkpoint-10/trainer_state.json"),
        ("secret", "InvalidSpec: Secret hub key token", "secrets/hub/token"),
    ],
)
def test_an_unreadable_file_is_reported_as_permission_denied(
    reports: dict[str, str], case: str, error: str, file: str
) -> None:
    report = reports[case]

    assert report.startswith(error), report
    assert f"{file}: permission denied (owned by uid" in report, report
    assert "No such file" not in report and "not mounted" not in report, report


def test_a_claim_the_trainer_may_not_write_ends_the_run_as_invalid_not_as_a_crash(reports: dict[str, str]) -> None:
    report = reports["output"]

    # exit 41: not retried, as the next attempt would meet the same permissions
    assert report.startswith("RuntimeError: exit 41 InvalidSpec: cannot write "), report
    assert "volumes/locked/demo: permission denied (" in report, report
    assert "volumes/locked owned by uid" in report and "give the trainer's user write access" in report, report


def test_the_preflight_finds_an_output_claim_it_may_not_write_before_any_accelerator(reports: dict[str, str]) -> None:
    report = reports["preflight"]

    assert report.startswith("RuntimeError: exit 41 InvalidSpec: checkpoints: cannot write "), report
    assert "volumes/locked/demo: permission denied (" in report, report
    assert "volumes/locked owned by uid" in report, report
