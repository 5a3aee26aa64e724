"""Warm starts from an adapter in object storage, on the Hugging Face Hub and in an OCI
registry, each over its protocol on loopback: moto's S3 server, a fake Hub that serves
what snapshot_download asks of a model repository, and Debian's docker-registry. Each
fetched adapter is shown to be where training starts (the model the trainer builds holds
the stored LoRA tensors), and broken sources are refused with their reason."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import logging
import tarfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from kubetune.api import FineTuneJobSpec, Precision
from kubetune.api.base import OciReference
from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.model import apply_method, load_model, resolve_source
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.oci import Descriptor, Image, Registry, adapter_image
from kubetune_trainer.warm import warm_start_folder

from . import test_oci
from .conftest import KEY_ID, SECRET, memorise_spec, serve_on_loopback
from .test_oci import REPOSITORY, LoopbackRegistry, pod

# The fixtures that start the servers: a docker-registry (anonymous, htpasswd, token) and moto.
registry = test_oci.registry

HUB_REPO = "kubetune-tests/tiny-phi3-adapter"
HUB_TOKEN = "hf_not-a-real-token-but-a-planted-one"
COMMIT = "c0ffee" + "0" * 34
PUSHED_BY = "kubetune-test"


def warm_job(source: dict[str, Any], **training: Any) -> FineTuneJobSpec:
    return memorise_spec("lora", ["adapter"], training={"warmStart": source, **training})


def adapter_files(output: Path) -> list[str]:
    """The files a warm start takes from an output's adapter folder: all but peft's card."""
    return sorted(p.name for p in (output / "adapter").iterdir() if p.name != "README.md")


def assert_training_starts_from(folder: Path, stored: Path, spec: FineTuneJobSpec, runtime: Runtime) -> None:
    """The model the trainer builds from `folder` holds the LoRA tensors saved in `stored`."""
    import torch
    from safetensors.torch import load_file

    source = resolve_source(spec, runtime)
    model = apply_method(load_model(spec, source, Precision.FP32, runtime), spec, source, folder)
    built = {name.replace(".default", ""): p for name, p in model.named_parameters() if "lora_" in name}
    expected = load_file(stored / "adapter_model.safetensors")
    assert set(built) == set(expected) and expected
    for name, tensor in expected.items():
        assert built[name].requires_grad, name
        assert torch.equal(built[name].detach(), tensor), name


# ---------------------------------------------------------------------------- object storage


@pytest.fixture
def bucket(endpoint: str, runtime: Runtime, adapter: Path) -> Iterator[tuple[Any, Runtime]]:
    """The bucket `models` holding the earlier output under demo/, and a pod with its Secret."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    client.create_bucket(Bucket="models")
    for path in adapter.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "models", f"demo/{path.relative_to(adapter).as_posix()}")
    secret = runtime.secrets / "s3-credentials"
    secret.mkdir(parents=True)
    (secret / "AWS_ACCESS_KEY_ID").write_text(KEY_ID)
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(SECRET)
    yield client, runtime
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="models"):
        for item in page.get("Contents", []):
            client.delete_object(Bucket="models", Key=item["Key"])
    client.delete_bucket(Bucket="models")


def s3_source(endpoint: str, uri: str) -> dict[str, Any]:
    return {"s3": {"uri": uri, "endpoint": endpoint, "credentialsSecret": {"name": "s3-credentials"}}}


def test_a_prefix_without_the_adapter_weights_is_refused(
    bucket: tuple[Any, Runtime],
    endpoint: str,
    adapter: Path,
) -> None:
    client, runtime = bucket
    client.upload_file(str(adapter / "adapter" / "adapter_config.json"), "models", "half/adapter_config.json")

    with pytest.raises(InvalidSpec) as refused:
        warm_start_folder(warm_job(s3_source(endpoint, "s3://models/half")), runtime)

    assert str(refused.value).startswith("warm start from s3://models/half: no adapter_model.safetensors there; ")
    with pytest.raises(InvalidSpec, match=r"^warm start: s3://models/nothing: no adapter_config\.json, "):
        warm_start_folder(warm_job(s3_source(endpoint, "s3://models/nothing")), runtime)


# ---------------------------------------------------------------------------- the Hub


@dataclass
class FakeHub:
    """A model repository at one commit, served the way huggingface_hub downloads it:
    revision info, the recursive tree listing, then HEAD and GET of each file it wants."""

    files: dict[str, bytes]
    endpoint: str = ""
    fetched: list[str] = field(default_factory=list)
    authorizations: set[str | None] = field(default_factory=set)


def _hub_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.authorizations.add(self.headers.get("Authorization"))
            path = unquote(urlsplit(self.path).path)
            resolve = f"/{HUB_REPO}/resolve/{COMMIT}/"
            if path == f"/api/models/{HUB_REPO}/revision/main":
                self._json({"id": HUB_REPO, "sha": COMMIT})
            elif path == f"/api/models/{HUB_REPO}/tree/{COMMIT}":
                self._json(
                    [
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in hub.files.items()
                    ]
                )
            elif path.startswith(resolve) and path.removeprefix(resolve) in hub.files:
                name = path.removeprefix(resolve)
                data = hub.files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    hub.fetched.append(name)
                    self.wfile.write(data)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def _json(self, document: Any) -> None:
            data = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, bytes]], FakeHub]]:
    """Starts a fake Hub serving the files given, with HF_ENDPOINT pointing at it."""
    servers: list[ThreadingHTTPServer] = []

    def start(files: dict[str, bytes]) -> FakeHub:
        hub = FakeHub(files)
        server, hub.endpoint = serve_on_loopback(_hub_handler(hub))
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        return hub

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def hub(adapter: Path, serve_hub: Callable[[dict[str, bytes]], FakeHub]) -> FakeHub:
    """The earlier output pushed as it was (adapter/ beside merged/ and the card), with a
    pickled copy of the weights that must never be fetched."""
    files = {p.relative_to(adapter).as_posix(): p.read_bytes() for p in adapter.rglob("*") if p.is_file()}
    files["adapter/adapter_model.bin"] = b"a pickle that would run code as it loads"
    return serve_hub(files)


@pytest.fixture
def hub_pod(runtime: Runtime) -> Runtime:
    secret = runtime.secrets / "hub-token"
    secret.mkdir(parents=True)
    (secret / "token").write_text(HUB_TOKEN + "\n")
    return runtime


def hub_source() -> dict[str, Any]:
    return {"huggingFace": {"repo": HUB_REPO, "tokenSecret": {"name": "hub-token"}}}


def test_warm_start_from_a_hub_repository_fetches_the_adapter_alone(
    hub: FakeHub, hub_pod: Runtime, adapter: Path
) -> None:
    spec = warm_job(hub_source())

    folder = warm_start_folder(spec, hub_pod)

    assert folder is not None and folder.name == "adapter"
    assert sorted(hub.fetched) == [f"adapter/{name}" for name in adapter_files(adapter)]
    assert hub.authorizations == {f"Bearer {HUB_TOKEN}"}
    assert_training_starts_from(folder, adapter / "adapter", spec, hub_pod)


def test_a_hub_repository_with_pickled_weights_only_is_refused(
    adapter: Path, hub_pod: Runtime, serve_hub: Callable[[dict[str, bytes]], FakeHub]
) -> None:
    files = {
        "adapter_config.json": (adapter / "adapter" / "adapter_config.json").read_bytes(),
        "adapter_model.bin": b"a pickle that would run code as it loads",
    }
    hub = serve_hub(files)

    with pytest.raises(InvalidSpec) as refused:
        warm_start_folder(warm_job(hub_source()), hub_pod)

    assert str(refused.value).startswith(
        f"warm start from Hugging Face repository {HUB_REPO} (revision main): no adapter_model.safetensors there; "
    )
    assert hub.fetched == ["adapter_config.json"]


# ---------------------------------------------------------------------------- OCI registries


def oci_source(reference: str, secret: str | None = "registry-push") -> dict[str, Any]:
    return {"oci": {"reference": reference} | ({"secret": {"name": secret}} if secret else {})}


def push(image: Image, address: str, runtime: Runtime, tag: str = "v1", secret: str | None = None) -> str:
    reference = OciReference.model_validate(
        {"reference": f"{address}/{REPOSITORY}:{tag}"} | ({"secret": {"name": secret}} if secret else {})
    )
    return Registry.open(reference, runtime).push(image)


def test_warm_start_from_an_adapter_image_pinned_by_digest(
    registry: LoopbackRegistry,
    adapter: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    pushing = pod(runtime, registry)
    image = adapter_image(adapter / "adapter", PUSHED_BY, tmp_path / "image")
    digest = push(image, registry.address, pushing, secret="registry-push")
    spec = warm_job(oci_source(f"{registry.address}/{REPOSITORY}@{digest}"))

    folder = warm_start_folder(spec, pushing)

    assert folder is not None
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_training_starts_from(folder, adapter / "adapter", spec, pushing)
    if registry.tokens is not None:
        assert registry.tokens.asked[-1]["scope"] == f"repository:{REPOSITORY}:pull"


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
def test_a_docker_schema_2_manifest_is_pulled_too(
    registry: LoopbackRegistry,
    adapter: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    image = adapter_image(adapter / "adapter", PUSHED_BY, tmp_path / "image")
    push(image, registry.address, runtime)
    docker = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {**image.config.as_json(), "mediaType": "application/vnd.docker.container.image.v1+json"},
        "layers": [{**image.layer.as_json(), "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}],
    }
    _put_manifest(registry, "docker", json.dumps(docker).encode(), docker["mediaType"])  # type: ignore[arg-type]
    spec = warm_job(oci_source(f"{registry.address}/{REPOSITORY}:docker", secret=None))

    folder = warm_start_folder(spec, runtime)

    assert folder is not None
    assert_training_starts_from(folder, adapter / "adapter", spec, runtime)


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
def test_a_layer_that_climbs_out_of_its_folder_is_refused(
    registry: LoopbackRegistry,
    adapter: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    config = (adapter / "adapter" / "adapter_config.json").read_bytes()
    weights = (adapter / "adapter" / "adapter_model.safetensors").read_bytes()
    entries = {
        "data/adapter_config.json": config,
        "data/adapter_model.safetensors": weights,
        "data/../../planted": b"x",
    }
    push(_image(tmp_path / "image", entries), registry.address, runtime)

    with pytest.raises(InvalidSpec, match=r"has an entry 'data/\.\./\.\./planted' that leaves its folder; refused"):
        warm_start_folder(warm_job(oci_source(f"{registry.address}/{REPOSITORY}:v1", secret=None)), runtime)

    assert not list(runtime.work.parent.rglob("planted"))


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
def test_a_layer_whose_digest_differs_is_refused(
    registry: LoopbackRegistry,
    adapter: Path,
    runtime: Runtime,
    tmp_path: Path,
) -> None:
    image = adapter_image(adapter / "adapter", PUSHED_BY, tmp_path / "image")
    push(image, registry.address, runtime)
    # The registry's copy of the layer changes under it (same size, one byte flipped).
    hexdigest = image.layer.digest.removeprefix("sha256:")
    [stored] = registry.log.parent.glob(f"storage/docker/registry/v2/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    with pytest.raises(InvalidSpec) as refused:
        warm_start_folder(warm_job(oci_source(f"{registry.address}/{REPOSITORY}:v1", secret=None)), runtime)

    assert f"layer {image.layer.digest} ({image.layer.size} bytes) arrived with digest sha256:" in str(refused.value)
    assert str(refused.value).endswith("; refused")


def _image(folder: Path, entries: dict[str, bytes]) -> Image:
    """A hand-made image whose one layer holds `entries` as they are named."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for name, data in entries.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    layer_bytes = gzip.compress(tar.getvalue(), mtime=0)
    config_bytes = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    descriptors = []
    for media_type, data in (
        ("application/vnd.oci.image.layer.v1.tar+gzip", layer_bytes),
        ("application/vnd.oci.image.config.v1+json", config_bytes),
    ):
        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        descriptors.append(Descriptor(media_type, digest, len(data)))
    layer, config = descriptors
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.as_json(),
        "layers": [layer.as_json()],
    }
    return Image(folder, layer, config, json.dumps(manifest).encode())


def _put_manifest(registry: LoopbackRegistry, tag: str, manifest: bytes, media_type: str) -> None:
    request = urllib.request.Request(
        f"http://{registry.address}/v2/{REPOSITORY}/manifests/{tag}",
        data=manifest,
        method="PUT",
        headers={"Content-Type": media_type},
    )
    urllib.request.urlopen(request, timeout=10).close()


# ---------------------------------------------------------------------------- volumes and base models


PHI3 = "microsoft/Phi-3-mini-4k-instruct"


def on_a_volume(runtime: Runtime, files: dict[str, bytes]) -> Runtime:
    """The pod with a claim `adapters` whose folder `earlier` holds `files`."""
    folder = runtime.work.parent / "volumes" / "adapters" / "earlier"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return dataclasses.replace(runtime, volumes=folder.parent.parent)


@pytest.mark.parametrize(
    ("trained_on", "model", "warned"),
    [
        # kubetune's own adapters name the Hub cache folder their base was downloaded to.
        pytest.param(
            f"/kubetune/work/hf-cache/models--microsoft--{PHI3.partition('/')[2]}/snapshots/abc",
            {"preset": "phi-3-mini-4k-instruct"},
            False,
            id="the-same-repository",
        ),
        pytest.param("meta-llama/Llama-3.2-1B", {"huggingFace": {"repo": PHI3}}, True, id="another-repository"),
        pytest.param(
            "meta-llama/Llama-3.2-1B", {"pvc": {"claimName": "models", "path": "phi-3"}}, False, id="model-on-a-volume"
        ),
        pytest.param("/kubetune/volumes/models/phi-3", {"huggingFace": {"repo": PHI3}}, False, id="adapter-of-a-path"),
    ],
)
def test_an_adapter_of_another_base_model_is_loaded_with_a_warning(
    trained_on: str,
    model: dict[str, Any],
    warned: bool,
    adapter: Path,
    runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = json.loads((adapter / "adapter" / "adapter_config.json").read_text())
    trainer = on_a_volume(
        runtime,
        {
            "adapter_config.json": json.dumps(config | {"base_model_name_or_path": trained_on}).encode(),
            "adapter_model.safetensors": (adapter / "adapter" / "adapter_model.safetensors").read_bytes(),
        },
    )
    spec = warm_job({"pvc": {"claimName": "adapters", "path": "earlier"}})
    spec = spec.model_copy(update={"model": spec.model.model_validate(model)})

    with caplog.at_level(logging.WARNING, logger="kubetune_trainer.warm"):
        assert warm_start_folder(spec, trainer) == trainer.volumes / "adapters" / "earlier"

    assert ("was trained on meta-llama/Llama-3.2-1B, and this job trains" in caplog.text) is warned


def test_a_folder_of_pickled_weights_is_refused_with_its_reason(adapter: Path, runtime: Runtime) -> None:
    config = (adapter / "adapter" / "adapter_config.json").read_bytes()
    trainer = on_a_volume(runtime, {"adapter_config.json": config, "adapter_model.bin": b"a pickle"})

    with pytest.raises(InvalidSpec) as refused:
        warm_start_folder(warm_job({"pvc": {"claimName": "adapters", "path": "earlier"}}), trainer)

    assert str(refused.value).startswith(
        "warm start from adapters:earlier: no adapter_model.safetensors there (it holds adapter_model.bin: "
        "pickled weights are refused"
    )


def test_other_ranks_of_the_pod_take_the_folder_rank_zero_fetched(
    hub: FakeHub, hub_pod: Runtime, adapter: Path
) -> None:
    spec = warm_job(hub_source())
    first = warm_start_folder(spec, hub_pod)
    fetched = list(hub.fetched)

    assert warm_start_folder(spec, dataclasses.replace(hub_pod, local_rank=1)) == first
    assert hub.fetched == fetched
