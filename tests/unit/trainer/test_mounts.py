"""The trainer's own gate: every path it joins onto a mount stays inside it, even for a
spec that reached it without the API's checks, and even through a symbolic link on the
volume. Fast: no model, no training."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from kubetune.api.base import PvcLocation
from kubetune.api.spec import DatasetSource, FineTuneJobSpec, ModelSpec
from kubetune.cli import cli
from kubetune_trainer.data.sources import source_rows
from kubetune_trainer.errors import InvalidData, InvalidSpec
from kubetune_trainer.local import write_config_maps
from kubetune_trainer.model import resolve_source
from kubetune_trainer.mounts import inside, open_to_readers
from kubetune_trainer.outputs import output_folder
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import secret_value


@pytest.fixture
def pod(tmp_path: Path) -> Runtime:
    """A pod's folders under tmp_path, with claim `models` holding a file and a secret beside the volumes."""
    (tmp_path / "volumes" / "models" / "phi3").mkdir(parents=True)
    (tmp_path / "volumes" / "models" / "phi3" / "config.json").write_text("{}")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "config.json").write_text('{"planted": true}')
    return Runtime.from_env(
        {
            "KUBETUNE_VOLUMES": str(tmp_path / "volumes"),
            "KUBETUNE_CONFIGMAPS": str(tmp_path / "configmaps"),
            "KUBETUNE_SECRETS": str(tmp_path / "secrets"),
            "KUBETUNE_WORK": str(tmp_path / "work"),
        }
    )


@pytest.mark.parametrize("path", ["..", "../private", "phi3/../../../private", "/../private", "a/.."])
def test_a_parent_segment_is_refused(pod: Runtime, path: str) -> None:
    with pytest.raises(
        InvalidSpec, match=rf"^path on claim models '{_re(path)}' leads outside .*models \(a '\.\.' segment\)"
    ):
        pod.claim_path("models", path)


@pytest.mark.parametrize(("path", "inside_at"), [("phi3", "phi3"), ("/phi3", "phi3"), ("/", ""), ("./phi3/", "phi3")])
def test_paths_inside_the_claim_join_as_before(pod: Runtime, path: str, inside_at: str) -> None:
    assert pod.claim_path("models", path) == pod.volumes / "models" / inside_at


def test_a_symbolic_link_out_of_the_claim_is_refused(pod: Runtime, tmp_path: Path) -> None:
    (pod.volumes / "models" / "escape").symlink_to(tmp_path / "private")

    with pytest.raises(InvalidSpec, match=r"'escape/config.json' leads outside .* \(a symbolic link to .*private"):
        pod.claim_path("models", "escape/config.json")


def test_links_within_the_claim_and_a_claim_folder_that_is_a_link_are_fine(pod: Runtime, tmp_path: Path) -> None:
    (pod.volumes / "models" / "current").symlink_to("phi3")
    (tmp_path / "elsewhere" / "adapters").mkdir(parents=True)
    (pod.volumes / "adapters").symlink_to(tmp_path / "elsewhere" / "adapters")  # kubetune run's mapping

    assert pod.claim_path("models", "current/config.json") == pod.volumes / "models" / "current" / "config.json"
    assert pod.claim_path("adapters", "v1") == pod.volumes / "adapters" / "v1"


def test_config_map_and_secret_keys_stay_in_their_folders(pod: Runtime, tmp_path: Path) -> None:
    (tmp_path / "secrets" / "hub").mkdir(parents=True)
    (tmp_path / "secrets" / "token").write_text("not for this job")

    with pytest.raises(InvalidSpec, match=r"^ConfigMap data key '\.\./\.\./private/config.json' leads outside"):
        pod.config_map_file("data", "../../private/config.json")
    with pytest.raises(InvalidSpec, match=r"^Secret hub key '\.\./token' leads outside"):
        secret_value(pod, "hub", "../token")


def test_the_error_class_is_the_callers(tmp_path: Path) -> None:
    with pytest.raises(InvalidData, match=r"object key '\.\./x' leads outside"):
        inside(tmp_path, "../x", "object key", InvalidData)


# A spec built without validation, as if the API's gates had been passed by: the trainer
# still refuses at the join, before it reads or writes anything.
def _unchecked_pvc(path: str) -> PvcLocation:
    return PvcLocation.model_construct(claim_name="models", path=path, read_write_many=False)


def test_the_model_is_not_read_from_outside_its_claim(pod: Runtime) -> None:
    spec: Any = FineTuneJobSpec.model_construct(model=ModelSpec.model_construct(pvc=_unchecked_pvc("../../private")))

    with pytest.raises(InvalidSpec, match="leads outside"):
        resolve_source(spec, pod)


def test_dataset_rows_are_not_read_from_outside_their_claim(pod: Runtime) -> None:
    source = DatasetSource.model_construct(pvc=_unchecked_pvc("../../private/config.json"))

    with pytest.raises(InvalidSpec, match="leads outside"):
        list(source_rows(source, pod))


def test_the_output_is_not_written_outside_its_claim(pod: Runtime) -> None:
    output: Any = type("Output", (), {"pvc": _unchecked_pvc("../../x")})()
    spec: Any = type("Spec", (), {"output": output})()

    with pytest.raises(InvalidSpec, match="leads outside"):
        output_folder(spec, pod)


def test_kubetune_run_lays_out_no_config_map_key_outside_its_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="leads outside"):
        write_config_maps({"data": {"../../planted.txt": "x"}}, tmp_path / "work" / "configmaps")

    assert not list(tmp_path.rglob("planted.txt"))


def test_kubetune_run_refuses_an_output_path_out_of_the_volumes(tmp_path: Path, job: dict[str, Any]) -> None:
    job["spec"]["output"] = {"pvc": {"claimName": "results", "path": "../../x"}}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))

    result = CliRunner().invoke(cli, ["run", str(manifest), "--volumes", str(tmp_path / "volumes")])

    assert result.exit_code == 1
    assert "spec.output.pvc.path: must not contain a '..' segment" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_kubetune_run_refuses_a_config_map_key_that_is_no_file_name(tmp_path: Path, job: dict[str, Any]) -> None:
    job["spec"]["dataset"] = {"configMap": {"name": "data", "key": "train.jsonl"}}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "data"}, "data": {"../x": "{}"}}
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump_all([config_map, job]))

    result = CliRunner().invoke(cli, ["run", str(manifest), "--volumes", str(tmp_path / "volumes")])

    assert result.exit_code == 1
    assert "data['../x']: '../x' is not a ConfigMap key" in result.output


def _re(text: str) -> str:
    import re

    return re.escape(text)


def _others_read(path: Path) -> bool:
    return bool(path.stat().st_mode & 0o004)


def test_outputs_are_opened_to_readers_as_the_umask_allows(tmp_path: Path) -> None:
    weights = tmp_path / "out" / "adapter" / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    weights.chmod(0o600)  # as safetensors writes them
    previous = os.umask(0o022)
    try:
        open_to_readers(tmp_path / "out")
    finally:
        os.umask(previous)

    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE(weights.parent.stat().st_mode) & 0o005 == 0o005


def test_a_private_umask_keeps_outputs_private(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")
    weights.chmod(0o600)
    previous = os.umask(0o077)
    try:
        open_to_readers(tmp_path)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(weights.stat().st_mode) == 0o600


def test_a_tiny_model_can_be_read_by_the_pods_user(volumes: Path) -> None:
    files = [path for path in (volumes / "models" / "tiny-phi3").iterdir() if path.is_file()]

    assert files
    assert [path.name for path in files if not _others_read(path)] == []
