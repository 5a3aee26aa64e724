"""Hub models download once per pod: local rank 0 fetches, the other ranks wait for it."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.model import ModelSource, fetch_once, write_marker
from kubetune_trainer.runtime import Runtime

HUB = ModelSource("microsoft/Phi-3-mini-4k-instruct", "main", None, False, None)


def test_models_on_a_volume_are_not_fetched(runtime: Runtime, volumes: Path) -> None:
    local = dataclasses.replace(HUB, location=str(volumes / "models" / "tiny-phi3"))

    assert fetch_once(local, runtime) is local


def test_other_ranks_wait_for_local_rank_zero(runtime: Runtime, tmp_path: Path) -> None:
    worker = dataclasses.replace(runtime, local_rank=1)
    cache = runtime.work / "hf-cache"

    def rank_zero_finishes() -> None:
        time.sleep(0.2)
        write_marker(cache / f".ready-{_key()}", str(tmp_path / "snapshot"))

    cache.mkdir(parents=True)
    threading.Thread(target=rank_zero_finishes).start()
    fetched = fetch_once(HUB, worker, timeout=10, pause=0.05)

    assert fetched.location == str(tmp_path / "snapshot")
    assert fetched.display == "microsoft/Phi-3-mini-4k-instruct"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub client offline, as HF_HUB_OFFLINE=1 makes it in a new process: it reads the
    variable when first imported, so its constant is set too (else the test asks the Hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.mark.usefixtures("offline")
def test_a_failed_download_stops_every_rank_with_its_reason(runtime: Runtime) -> None:
    with pytest.raises(InvalidSpec, match="cannot download model microsoft/Phi-3-mini-4k-instruct"):
        fetch_once(HUB, runtime)
    with pytest.raises(InvalidSpec, match="cannot download model"):
        fetch_once(HUB, dataclasses.replace(runtime, local_rank=1), timeout=5, pause=0.01)


def _key() -> str:
    import hashlib

    return hashlib.sha256(f"{HUB.location}@{HUB.revision}".encode()).hexdigest()[:16]


def test_the_installations_model_cache_holds_the_files_and_the_pod_keeps_the_markers(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    asked: dict[str, object] = {}

    def download(repo: str, **options: object) -> str:
        asked.update(options, repo=repo)
        return str(tmp_path / "shared" / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    shared = dataclasses.replace(runtime, model_cache=tmp_path / "shared")

    fetched = fetch_once(HUB, shared)

    assert asked["cache_dir"] == str(tmp_path / "shared")
    assert fetched.location == str(tmp_path / "shared" / "snapshot")
    assert (runtime.work / "hf-cache" / f".ready-{_key()}").is_file()


@pytest.mark.usefixtures("offline")  # the file must come from the cache, as the Hub left it
def test_the_config_alone_comes_from_the_hub_cache_the_weights_will_join(runtime: Runtime) -> None:
    from kubetune_trainer.model import fetch_config

    commit = "0" * 40
    repo = runtime.work / "hf-cache" / "models--microsoft--Phi-3-mini-4k-instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text('{"model_type": "phi3", "hidden_size": 3072}')

    assert fetch_config(HUB, runtime) == {"model_type": "phi3", "hidden_size": 3072}
    uncached = dataclasses.replace(HUB, location="microsoft/Phi-3-medium-4k-instruct")
    with pytest.raises(
        InvalidSpec, match=r"cannot download the config\.json of model microsoft/Phi-3-medium-4k-instruct"
    ):
        fetch_config(uncached, runtime)
