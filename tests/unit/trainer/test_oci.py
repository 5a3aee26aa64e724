"""Adapters pushed to an OCI registry as Kaito's adapter image: the reference distribution
registry (Debian's docker-registry) on loopback, anonymous, behind htpasswd, and behind a
token service; each image is pulled back over HTTP, checked and loaded with peft."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kubetune.api.spec import FineTuneJobSpec, OutputSpec
from kubetune.api.status import OutputStatus
from kubetune.contract import Env
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.outputs import check_destination, output_folder, output_location, publish
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.oci import SECRET_KEYS, Credentials, ImageName, adapter_image
from kubetune_trainer.stores.secrets import secret_keys

from .conftest import _free_port, memorise_spec, serve_on_loopback

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
USER, PASSWORD = "pusher", "not-a-real-password-but-a-planted-one"
REPOSITORY = "adapters/tiny-phi3"
SERVICE, ISSUER = "kubetune-test-registry", "kubetune-test-tokens"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


# ---------------------------------------------------------------------------- a token service


class TokenService:
    """Issues registry tokens (JWTs signed by a self-signed certificate the registry trusts)
    to whoever sends USER and PASSWORD as basic auth, and records what was asked."""

    def __init__(self, folder: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(self.key, hashes.SHA256())
        )
        self.certificate = folder / "token-signer.pem"
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self.chain = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
        self.asked: list[dict[str, Any]] = []
        self.server, self.url = serve_on_loopback(self._handler())

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def issue(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        _, repository, actions = scope.split(":")
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + 300,
            "jti": f"{now}-{len(self.asked)}",
            "access": [{"type": "repository", "name": repository, "actions": actions.split(",")}],
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.chain}
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {key: values[0] for key, values in parse_qs(urlsplit(self.path).query).items()}
                authorized = self.headers.get("Authorization") == _basic(USER, PASSWORD)
                service.asked.append(query | {"authorized": authorized})
                if not authorized:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": service.issue(query["scope"])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------- the registry


@dataclass
class LoopbackRegistry:
    """A docker-registry process on 127.0.0.1, and a plain HTTP client to pull from it."""

    address: str
    auth: str
    log: Path
    tokens: TokenService | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def pull(self, path: str, accept: str | None = None) -> tuple[bytes, str]:
        """GET /v2/<repository>/<path>: the body and its Content-Type."""
        request = urllib.request.Request(f"http://{self.address}/v2/{REPOSITORY}/{path}")
        if accept:
            request.add_header("Accept", accept)
        if self.auth == "htpasswd":
            request.add_header("Authorization", _basic(USER, PASSWORD))
        if self.tokens is not None:
            request.add_header("Authorization", f"Bearer {self.tokens.issue(f'repository:{REPOSITORY}:pull')}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read(), response.headers.get("Content-Type", "")

    def requests(self, method: str) -> list[str]:
        """The URIs of the requests of this method that the registry has answered (from its log)."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [
            entry["http.request.uri"]
            for entry in lines
            if entry.get("http.request.method") == method and "http.response.status" in entry
        ]


def _auth_config(auth: str, folder: Path, tokens: TokenService | None) -> dict[str, Any]:
    if auth == "htpasswd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            crypt = pytest.importorskip("crypt", reason="the htpasswd variant hashes its password with crypt (bcrypt)")
        (folder / "htpasswd").write_text(
            f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n"
        )
        return {"htpasswd": {"realm": "kubetune-test", "path": str(folder / "htpasswd")}}
    if tokens is not None:
        return {
            "token": {
                "realm": tokens.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(tokens.certificate),
            }
        }
    return {}


@pytest.fixture(params=["anonymous", "htpasswd", "token"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopbackRegistry]:
    if not REGISTRY_BINARY.exists():
        pytest.skip(
            f"{REGISTRY_BINARY} is not installed: run `make registry`, or as root "
            "`apt-get install -y --no-install-recommends docker-registry`"
        )
    folder = tmp_path / "registry"
    folder.mkdir()
    tokens = TokenService(folder) if request.param == "token" else None
    address = f"127.0.0.1:{_free_port()}"
    config = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "storage")}},
        "http": {"addr": address, "secret": "kubetune-test"},
        "auth": _auth_config(request.param, folder, tokens),
    }
    (folder / "config.yml").write_text(json.dumps(config))  # YAML reads JSON
    server = LoopbackRegistry(address, request.param, folder / "registry.log", tokens)
    with server.log.open("wb") as log:
        server.process = subprocess.Popen([str(REGISTRY_BINARY), "serve", str(folder / "config.yml")], stderr=log)
    try:
        _wait_until_it_answers(server)
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)
        if tokens is not None:
            tokens.server.shutdown()


def _wait_until_it_answers(server: LoopbackRegistry) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert server.process is not None and server.process.poll() is None, server.log.read_text()
        try:
            urllib.request.urlopen(f"http://{server.address}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"docker-registry did not answer on {server.address}: {server.log.read_text()}")


# ---------------------------------------------------------------------------- the adapter and the job


def oci_job(address: str, secret: str | None = "registry-push") -> FineTuneJobSpec:
    spec = memorise_spec("lora", ["adapter"])
    reference: dict[str, Any] = {"reference": f"{address}/{REPOSITORY}:v1"}
    if secret is not None:
        reference["secret"] = {"name": secret}
    return spec.model_copy(update={"output": OutputSpec.model_validate({"oci": reference, "formats": ["adapter"]})})


def pod(runtime: Runtime, registry: LoopbackRegistry, password: str = PASSWORD) -> Runtime:
    """The trainer's runtime with the registry's Secret mounted: a Docker config for
    htpasswd, username and password keys for the token service."""
    secret = runtime.secrets / "registry-push"
    secret.mkdir(parents=True)
    if registry.auth == "htpasswd":
        login = base64.b64encode(f"{USER}:{password}".encode()).decode()
        docker_config = {"auths": {f"http://{registry.address}": {"auth": login}}}
        (secret / ".dockerconfigjson").write_text(json.dumps(docker_config))
    else:
        (secret / "username").write_text(USER)
        (secret / "password").write_text(password + "\n")
    return dataclasses.replace(runtime, output_override=None)


# ---------------------------------------------------------------------------- tests


def test_pushes_kaito_adapter_image_that_loads_with_peft(
    registry: LoopbackRegistry, adapter: Path, runtime: Runtime, volumes: Path, tmp_path: Path
) -> None:
    spec, trainer = oci_job(registry.address), pod(runtime, registry)

    check_destination(spec, trainer)
    location = publish(spec, trainer, adapter)

    assert output_folder(spec, trainer) == trainer.work / "output"
    assert output_location(spec, trainer, adapter) == f"oci://{registry.address}/{REPOSITORY}:v1"
    manifest_bytes, content_type = registry.pull("manifests/v1", accept=MANIFEST_TYPE)
    assert location == f"oci://{registry.address}/{REPOSITORY}:v1@{_sha256(manifest_bytes)}"
    assert OutputStatus(location=location).digest == _sha256(manifest_bytes)  # what status.output shows
    assert content_type == MANIFEST_TYPE
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["annotations"] == {"sh.kaito.model.name": "models:tiny-phi3"}
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    config_bytes, _ = registry.pull(f"blobs/{manifest['config']['digest']}")
    layer_bytes, _ = registry.pull(f"blobs/{layer['digest']}")
    assert (_sha256(config_bytes), len(config_bytes)) == (manifest["config"]["digest"], manifest["config"]["size"])
    assert (_sha256(layer_bytes), len(layer_bytes)) == (layer["digest"], layer["size"])
    tar_bytes = gzip.decompress(layer_bytes)
    assert json.loads(config_bytes)["rootfs"] == {"type": "layers", "diff_ids": [_sha256(tar_bytes)]}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getnames() == ["data", "data/adapter_config.json", "data/adapter_model.safetensors"]
        tar.extractall(tmp_path / "pulled", filter="data")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "pulled" / "data" / name).read_bytes() == (adapter / "adapter" / name).read_bytes()
    _assert_loads_onto_the_base(tmp_path / "pulled" / "data", adapter / "adapter", volumes)
    if registry.tokens is not None:
        assert registry.tokens.asked[0] == {
            "scope": f"repository:{REPOSITORY}:pull,push",
            "service": SERVICE,
            "authorized": True,
        }
    assert PASSWORD not in registry.log.read_text()


def _assert_loads_onto_the_base(pulled: Path, saved: Path, volumes: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(volumes / "models" / "tiny-phi3")
    model = PeftModel.from_pretrained(base, pulled)
    loaded = {name: tensor for name, tensor in model.state_dict().items() if "lora_" in name}
    expected = load_file(saved / "adapter_model.safetensors")
    assert len(loaded) == len(expected) > 0
    for name, tensor in expected.items():
        loaded_name = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert torch.equal(loaded[loaded_name], tensor), name


@pytest.mark.parametrize("registry", ["anonymous"], indirect=True)
def test_a_second_push_sends_no_blob_again(
    registry: LoopbackRegistry, adapter: Path, runtime: Runtime, tmp_path: Path
) -> None:
    spec, trainer = oci_job(registry.address, secret=None), dataclasses.replace(runtime, output_override=None)

    first = publish(spec, trainer, adapter)
    uploads = len(registry.requests("POST"))
    second = publish(spec, dataclasses.replace(trainer, work=tmp_path / "another-pod"), adapter)

    assert first == second, "the same adapter makes the same image"
    assert uploads == 2, registry.requests("POST")  # the layer and the config, once
    assert len(registry.requests("POST")) == uploads
    assert len(registry.requests("HEAD")) == 4


@pytest.mark.parametrize("registry", ["htpasswd", "token"], indirect=True)
def test_a_refused_login_names_the_image_and_keeps_the_password(
    registry: LoopbackRegistry, adapter: Path, runtime: Runtime
) -> None:
    wrong = "a-wrong-password-that-must-not-leak"
    spec, trainer = oci_job(registry.address), pod(runtime, registry, password=wrong)

    with pytest.raises(TrainerError) as refused:
        publish(spec, trainer, adapter)

    message = str(refused.value)
    assert message.startswith(f"OCI registry {registry.address}/{REPOSITORY}:v1: ")
    assert "HTTP 401" in message
    assert wrong not in message and USER not in message


# ---------------------------------------------------------------------------- no registry needed


@pytest.mark.parametrize(
    ("reference", "base_url", "name"),
    [
        ("registry.example.com/adapters/phi3:v1", "https://registry.example.com", "adapters/phi3:v1"),
        ("registry.example.com:5000/phi3:v1", "https://registry.example.com:5000", "phi3:v1"),
        ("10.0.0.7:5000/adapters/phi3:v1", "https://10.0.0.7:5000", "adapters/phi3:v1"),
        ("127.0.0.1:5000/adapters/phi3:v1", "http://127.0.0.1:5000", "adapters/phi3:v1"),
        ("localhost:5000/phi3:v1", "http://localhost:5000", "phi3:v1"),
        ("[::1]:5000/phi3:v1", "http://[::1]:5000", "phi3:v1"),
        ("kubetune/phi3:v1", "https://registry-1.docker.io", "kubetune/phi3:v1"),
        ("phi3:v1", "https://registry-1.docker.io", "library/phi3:v1"),
    ],
)
def test_references_name_https_registries_and_plain_http_only_on_loopback(
    reference: str, base_url: str, name: str
) -> None:
    image = ImageName.parse(reference)

    assert image.base_url == base_url
    assert f"{image.repository}:{image.tag}" == name


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("registry.example.com/adapters/phi3@sha256:" + "0" * 64, "needs a tag"),
        ("registry.example.com:5000/adapters/phi3", "name a tag"),
    ],
)
def test_an_output_reference_without_a_tag_is_refused(reference: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        ImageName.parse(reference)


def test_docker_config_credentials_are_found_by_host(tmp_path: Path) -> None:
    secret = tmp_path / "registry-push"
    secret.mkdir()
    login = base64.b64encode(b"robot$push:s3cret:with:colons").decode()
    auths = {
        "https://registry.example.com": {"auth": login},
        "https://index.docker.io/v1/": {"username": "hub-user", "password": "hub-pass"},
    }
    (secret / ".dockerconfigjson").write_text(json.dumps({"auths": auths}))
    runtime = Runtime.from_env({Env.SECRETS: str(tmp_path)})
    keys = secret_keys(runtime, "registry-push", SECRET_KEYS)

    assert Credentials.from_secret(keys, "registry-push", "registry.example.com") == Credentials(
        "robot$push", "s3cret:with:colons"
    )
    assert Credentials.from_secret(keys, "registry-push", "docker.io") == Credentials("hub-user", "hub-pass")
    with pytest.raises(InvalidSpec) as missing:
        Credentials.from_secret(keys, "registry-push", "ghcr.io")
    assert str(missing.value) == (
        "Secret registry-push key .dockerconfigjson has no entry for ghcr.io "
        "(it has: index.docker.io, registry.example.com)"
    )
    assert "s3cret" not in repr(Credentials.from_secret(keys, "registry-push", "registry.example.com"))


def test_an_unmounted_secret_is_refused_before_training(runtime: Runtime) -> None:
    spec = oci_job("registry.example.com", secret="nowhere")

    with pytest.raises(InvalidSpec, match=r"Secret nowhere has neither a \.dockerconfigjson key nor username"):
        check_destination(spec, dataclasses.replace(runtime, output_override=None))


def test_the_same_adapter_makes_the_same_image(adapter: Path, tmp_path: Path) -> None:
    first = adapter_image(adapter / "adapter", "phi-3-mini-4k-instruct", tmp_path / "first")
    second = adapter_image(adapter / "adapter", "phi-3-mini-4k-instruct", tmp_path / "second")

    assert first.digest == second.digest
    assert first.blob(first.layer).read_bytes() == second.blob(second.layer).read_bytes()


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
