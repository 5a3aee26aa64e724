"""Push an adapter to an OCI registry as the image Kaito serves, and pull one back.

The image follows Kaito's adapter layout, so Kaito and other OCI consumers can serve it:
one gzip-compressed tar layer holding data/adapter_config.json and
data/adapter_model.safetensors, an image config whose rootfs.diff_ids names the digest of
the uncompressed tar, and the manifest annotation sh.kaito.model.name naming the base
model. The layer is written without timestamps or owners: the same adapter makes the same
digests, so a second push sends no blob again.

The client speaks the part of the OCI distribution API that a push needs: HEAD a blob (one
the registry has is not sent), POST then PUT a blob in one piece, PUT the manifest by tag.
A pull (a warm start) GETs the manifest by tag or digest (OCI or Docker schema 2), then
each layer, following redirects to blob storage; each is checked against its digest, and
only regular files under data/ are taken from the layers, none whose path leaves the folder.
A 401 is answered once per request with what its WWW-Authenticate asks for: a Bearer token
from the realm it names (the credentials sent as basic auth, scope pull and push on the
repository, or pull alone for a pull), or basic auth itself.

Credentials come from the Secret that output.oci.secret (or training.warmStart.oci.secret)
names, mounted as files:

- key `.dockerconfigjson` (a Secret of type kubernetes.io/dockerconfigjson, as
  `kubectl create secret docker-registry` makes): the `auths` entry of the registry's
  host, by its `auth` (base64 of user:password) or its `username` and `password`;
- otherwise keys `username` and `password` (a Secret of type kubernetes.io/basic-auth).

Without a Secret the push or pull is anonymous. Credentials never appear in logs or messages.

Registries are reached over https. The spec has no switch for insecure registries, so
plain http is used only for loopback hosts (a registry beside the trainer, or a test's).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import ipaddress
import json
import logging
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, cast
from urllib.parse import urlencode, urljoin, urlsplit

from kubetune.api.base import OciReference
from kubetune_trainer.disk import disk_full
from kubetune_trainer.errors import InvalidSpec, TrainerError
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import secret_keys

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
PULLED_MANIFEST_TYPES = (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE)
PULLED_LAYER_TYPES = (
    LAYER_MEDIA_TYPE,
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
CHUNK_BYTES = 1024 * 1024
MODEL_NAME_ANNOTATION = "sh.kaito.model.name"
LAYER_FOLDER = "data"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")
TIMEOUT_SECONDS = 300

SECRET_KEYS = (".dockerconfigjson", "username", "password")
"""The keys of a registry's Secret (the module docstring says how each is read)."""


# ---------------------------------------------------------------------------- names


@dataclass(frozen=True)
class ImageName:
    """Where an image is pushed or pulled from: a registry host, a repository in it, and a
    tag (or, for an image pulled by digest, the digest)."""

    registry: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, reference: str, pull: bool = False) -> ImageName:
        """Read registry.example.com[:port]/repository:tag; without a host, Docker Hub. An
        image to pull may be pinned by digest instead (repository@sha256:...)."""
        path, at, digest = reference.partition("@")
        if at and not pull:
            raise InvalidSpec(f"{reference}: an output image needs a tag; its digest is known only after the push")
        if at:
            if not DIGEST.fullmatch(digest):
                raise InvalidSpec(f"{reference}: a digest is sha256: and 64 lower-case hexadecimal digits")
            if ":" in path.rpartition("/")[2]:  # repository:tag@digest: the digest decides
                path = path.rpartition(":")[0]
            tag = digest
        else:
            path, colon, tag = reference.rpartition(":")
            if not colon or "/" in tag:
                raise InvalidSpec(f"{reference}: name a tag, e.g. registry.example.com/adapters/name:v1")
        first, slash, rest = path.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            return cls(first, rest, tag)
        return cls("docker.io", path if slash else f"library/{path}", tag)

    @property
    def base_url(self) -> str:
        if self.registry in DOCKER_HUB:
            return "https://registry-1.docker.io"
        scheme = "http" if _is_loopback(urlsplit(f"//{self.registry}").hostname) else "https"
        return f"{scheme}://{self.registry}"

    @property
    def pinned(self) -> bool:
        """Whether the image is named by its digest rather than a tag."""
        return DIGEST.fullmatch(self.tag) is not None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}{'@' if self.pinned else ':'}{self.tag}"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_secret(cls, keys: Mapping[str, str], name: str, registry: str) -> Credentials:
        """The registry's login from the keys of the Secret `name` (they are in the module
        docstring; stores.secrets reads them)."""
        if ".dockerconfigjson" in keys:
            return cls._from_docker_config(keys[".dockerconfigjson"], name, registry)
        if "username" in keys and "password" in keys:
            return cls(keys["username"], keys["password"])
        raise InvalidSpec(f"Secret {name} has neither a .dockerconfigjson key nor username and password keys")

    @classmethod
    def _from_docker_config(cls, config: str, name: str, registry: str) -> Credentials:
        try:
            auths = json.loads(config)["auths"]
            entries: dict[str, dict[str, Any]] = {_host_of(key): entry for key, entry in auths.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidSpec(
                f"Secret {name} key .dockerconfigjson is not a Docker config (JSON with an auths object)"
            ) from None
        hosts = DOCKER_HUB if registry in DOCKER_HUB else (registry,)
        entry = next((entries[host] for host in hosts if host in entries), None)
        if entry is None:
            known = ", ".join(sorted(entries)) or "none"
            raise InvalidSpec(f"Secret {name} key .dockerconfigjson has no entry for {registry} (it has: {known})")
        try:
            if entry.get("auth"):
                username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            else:
                username, password = entry.get("username", ""), entry.get("password", "")
        except (ValueError, AttributeError):
            username, password = "", ""
        if not username or not isinstance(password, str):
            raise InvalidSpec(
                f"Secret {name} key .dockerconfigjson: the entry for {registry} has no username and password"
            )
        return cls(username, password)

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _host_of(key: str) -> str:
    """The host of an auths key, which may be a bare host or a URL (https://index.docker.io/v1/)."""
    return urlsplit(key if "://" in key else f"//{key}").netloc


# ---------------------------------------------------------------------------- the image


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """An image written to a folder: its blobs under blobs/sha256/, and its manifest."""

    folder: Path
    layer: Descriptor
    config: Descriptor
    manifest: bytes

    @property
    def digest(self) -> str:
        return _digest(self.manifest)

    def blob(self, descriptor: Descriptor) -> Path:
        return self.folder / "blobs" / "sha256" / descriptor.digest.removeprefix("sha256:")


def adapter_image(adapter: Path, base_model: str, folder: Path) -> Image:
    """Write the Kaito adapter image of an adapter folder (peft files) into `folder`."""
    missing = [name for name in ADAPTER_FILES if not (adapter / name).is_file()]
    if missing:
        raise TrainerError(f"{adapter} has no {', '.join(missing)}: there is no adapter to put in the image")
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer, diff_id = _write_layer(adapter, blobs)
    config = _write_blob(
        blobs,
        CONFIG_MEDIA_TYPE,
        # An adapter runs nowhere by itself; os and architecture are there because the image
        # spec requires them, with the values of the images Kaito builds.
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}},
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.as_json(),
        "layers": [layer.as_json()],
        "annotations": {MODEL_NAME_ANNOTATION: base_model},
    }
    return Image(folder, layer, config, _canonical(manifest))


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


class _Digesting:
    """Passes bytes on to a sink and keeps their count and sha256."""

    def __init__(self, sink: _Sink) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


def _write_layer(adapter: Path, blobs: Path) -> tuple[Descriptor, str]:
    """The gzip-compressed tar of data/<adapter files>, streamed to a blob file. Returns its
    descriptor and the digest of the uncompressed tar (the diff_id)."""
    partial = blobs / "layer.partial"
    with partial.open("wb") as file:
        compressed = _Digesting(file)
        with gzip.GzipFile(filename="", mode="wb", fileobj=cast(IO[bytes], compressed), mtime=0) as zipped:
            uncompressed = _Digesting(zipped)
            with tarfile.open(fileobj=cast(IO[bytes], uncompressed), mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_tar_entry(f"{LAYER_FOLDER}/", tarfile.DIRTYPE, 0o755))
                for name in ADAPTER_FILES:
                    path = adapter / name
                    with path.open("rb") as content:
                        entry = _tar_entry(f"{LAYER_FOLDER}/{name}", tarfile.REGTYPE, 0o644, path.stat().st_size)
                        tar.addfile(entry, content)
    partial.rename(blobs / compressed.digest.removeprefix("sha256:"))
    return Descriptor(LAYER_MEDIA_TYPE, compressed.digest, compressed.size), uncompressed.digest


def _tar_entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode, entry.size, entry.mtime = kind, mode, size, 0
    return entry


def _write_blob(blobs: Path, media_type: str, document: dict[str, Any]) -> Descriptor:
    data = _canonical(document)
    digest = _digest(data)
    (blobs / digest.removeprefix("sha256:")).write_bytes(data)
    return Descriptor(media_type, digest, len(data))


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# ---------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: Message
    body: bytes


class Registry:
    """One repository of a registry, as a pusher (an output) or a puller (a warm start) sees it."""

    def __init__(self, name: ImageName, credentials: Credentials | None, pull: bool = False) -> None:
        self.name = name
        self._credentials = credentials
        self._authorization: str | None = None
        self._pull = pull

    @classmethod
    def open(cls, reference: OciReference, runtime: Runtime, pull: bool = False) -> Registry:
        """The repository a reference names, with the credentials of its Secret: an output's,
        or with `pull` a warm start's (which may name a digest)."""
        name = ImageName.parse(reference.reference, pull)
        secret = reference.secret
        credentials = (
            Credentials.from_secret(secret_keys(runtime, secret.name, SECRET_KEYS), secret.name, name.registry)
            if secret
            else None
        )
        return cls(name, credentials, pull)

    def pull(self, folder: Path) -> str:
        """Put the regular files under data/ in the image's layers into `folder`, each layer
        checked against its digest first. Returns the manifest's digest."""
        manifest, digest = self._manifest()
        layers = _layers(manifest, self.name)
        folder.mkdir(parents=True, exist_ok=True)
        # Layers wait beside the folder, not in it, until they are checked.
        with tempfile.TemporaryDirectory(prefix=".layers-", dir=folder.parent) as scratch:
            for layer in layers:
                blob = Path(scratch) / layer.digest.removeprefix("sha256:")
                self._download(layer, blob)
                _extract_data(blob, folder, f"OCI image {self.name}: layer {layer.digest}")
        log.info("pulled %s@%s", self.name, digest)
        return digest

    def _manifest(self) -> tuple[dict[str, Any], str]:
        """The image manifest and its digest (which a pinned reference must match)."""
        headers = {"Accept": ", ".join(PULLED_MANIFEST_TYPES)}
        answer = self._call("GET", self._url("manifests", self.name.tag), "get the manifest", (200, 404), headers)
        if answer.status == 404:
            raise InvalidSpec(f"OCI registry {self.name}: no such image ({_server_said(answer)})")
        digest = _digest(answer.body)
        if self.name.pinned and digest != self.name.tag:
            raise InvalidSpec(f"OCI registry {self.name}: it sent a manifest whose digest is {digest}; refused")
        try:
            manifest = json.loads(answer.body)
            media_type = manifest.get("mediaType") or answer.headers.get("Content-Type", "").split(";")[0]
        except (ValueError, AttributeError):
            raise InvalidSpec(f"OCI registry {self.name}: the manifest is not a JSON object") from None
        if media_type not in PULLED_MANIFEST_TYPES:
            raise InvalidSpec(
                f"OCI image {self.name} has a manifest of type {media_type or 'unknown'}; an adapter image has "
                f"an image manifest ({' or '.join(PULLED_MANIFEST_TYPES)})"
            )
        return manifest, digest

    def _download(self, layer: Descriptor, target: Path) -> None:
        """The layer's blob into `target`, refused unless its digest and size are the manifest's."""
        with target.open("wb") as file:
            received = _Digesting(file)
            try:
                self._call("GET", self._url("blobs", layer.digest), f"get layer {layer.digest}", (200,), into=received)
            except TrainerError as error:  # the cause tells a full disk from the network's failure
                full = disk_full(error, [target.parent])
                if full is None:
                    raise
                raise full from error
        if (received.digest, received.size) != (layer.digest, layer.size):
            raise InvalidSpec(
                f"OCI image {self.name}: layer {layer.digest} ({layer.size} bytes) arrived with digest "
                f"{received.digest} ({received.size} bytes); refused"
            )

    def push(self, image: Image) -> str:
        """Send the blobs the registry lacks, then the manifest under the tag. Returns the
        manifest's digest."""
        for blob in (image.layer, image.config):
            if not self._has(blob):
                self._upload(blob, image.blob(blob))
        headers = {"Content-Type": MANIFEST_MEDIA_TYPE}
        self._call("PUT", self._url("manifests", self.name.tag), "put the manifest", (201,), headers, image.manifest)
        log.info("pushed %s@%s", self.name, image.digest)
        return image.digest

    def _has(self, blob: Descriptor) -> bool:
        found = self._call("HEAD", self._url("blobs", blob.digest), f"look up blob {blob.digest}", (200, 404))
        return found.status == 200

    def _upload(self, blob: Descriptor, path: Path) -> None:
        started = self._call("POST", self._url("blobs", "uploads/"), "start a blob upload", (202,))
        location = started.headers.get("Location")
        if not location:
            raise TrainerError(f"OCI registry {self.name}: it started a blob upload without saying where (no Location)")
        target = _with_query(urljoin(f"{self.name.base_url}/", location), digest=blob.digest)
        headers = {"Content-Type": "application/octet-stream"}
        self._call("PUT", target, f"upload blob {blob.digest}", (201,), headers, path)

    def _url(self, kind: str, reference: str) -> str:
        return f"{self.name.base_url}/v2/{self.name.repository}/{kind}/{reference}"

    def _call(
        self,
        method: str,
        url: str,
        doing: str,
        expect: tuple[int, ...],
        headers: dict[str, str] | None = None,
        body: bytes | Path | None = None,
        into: _Sink | None = None,
    ) -> _Answer:
        """One request, authenticated as the registry asks when it answers 401, and following
        redirects of reads (registries send blob downloads to their storage). A successful
        answer's body goes to `into` when one is given."""
        answer = self._send(method, url, headers or {}, body, into)
        authorization = self._answer_challenge(answer) if answer.status == 401 else None
        if authorization is not None:
            self._authorization = authorization
            answer = self._send(method, url, headers or {}, body, into)
        for _ in range(MAX_REDIRECTS):
            if not (method in ("GET", "HEAD") and answer.status in REDIRECTS and answer.headers.get("Location")):
                break
            url = urljoin(url, answer.headers["Location"])
            answer = self._send(method, url, headers or {}, None, into)
        if answer.status == 401:
            setting = "training.warmStart.oci.secret" if self._pull else "output.oci.secret"
            advice = "the credentials were refused" if self._credentials else f"name a Secret in {setting}"
            raise TrainerError(f"OCI registry {self.name}: cannot {doing}: {_server_said(answer)}; {advice}")
        if answer.status not in expect:
            raise TrainerError(f"OCI registry {self.name}: cannot {doing}: {_server_said(answer)}")
        return answer

    def _answer_challenge(self, answer: _Answer) -> str | None:
        """The Authorization header a 401's challenge asks for; None when there is none to give."""
        scheme, params = _parse_challenge(answer.headers.get("WWW-Authenticate", ""))
        if scheme == "bearer" and params.get("realm"):
            return f"Bearer {self._token(params)}"
        if scheme == "basic" and self._credentials is not None:
            return self._credentials.basic
        return None

    def _token(self, challenge: dict[str, str]) -> str:
        """A token for pull and push on the repository (pull alone for a puller), from the
        realm of a Bearer challenge."""
        realm = challenge["realm"]
        query = {"scope": f"repository:{self.name.repository}:{'pull' if self._pull else 'pull,push'}"}
        if challenge.get("service"):
            query["service"] = challenge["service"]
        headers = {"Authorization": self._credentials.basic} if self._credentials is not None else {}
        answer = self._send("GET", _with_query(realm, **query), headers, None, authorize=False)
        if answer.status != 200:
            raise TrainerError(f"OCI registry {self.name}: the token service {realm} refused: {_server_said(answer)}")
        try:
            grant = json.loads(answer.body)
            return str(grant.get("token") or grant["access_token"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TrainerError(
                f"OCI registry {self.name}: the token service {realm} answered without a token"
            ) from None

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | Path | None,
        into: _Sink | None = None,
        authorize: bool = True,
    ) -> _Answer:
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
            raise TrainerError(
                f"OCI registry {self.name}: refusing {parts.scheme}://{parts.netloc}: only https, or http on loopback"
            )
        headers = dict(headers)
        if authorize and self._authorization and parts.netloc == urlsplit(self.name.base_url).netloc:
            headers["Authorization"] = self._authorization
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.netloc, timeout=TIMEOUT_SECONDS)
        target = f"{parts.path or '/'}?{parts.query}" if parts.query else parts.path or "/"
        try:
            with ExitStack() as stack:
                payload = stack.enter_context(body.open("rb")) if isinstance(body, Path) else body
                if isinstance(body, Path):  # streamed from the file, so its length is said up front
                    headers["Content-Length"] = str(body.stat().st_size)
                connection.request(method, target, body=payload, headers=headers)
                response = connection.getresponse()
                if into is not None and response.status == 200:
                    shutil.copyfileobj(response, into, CHUNK_BYTES)
                    return _Answer(response.status, response.reason, response.headers, b"")
                return _Answer(response.status, response.reason, response.headers, response.read())
        except (OSError, http.client.HTTPException) as error:
            raise TrainerError(
                f"OCI registry {self.name}: cannot reach {parts.scheme}://{parts.netloc}: {error}"
            ) from None
        finally:
            connection.close()


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The scheme (lower case) and parameters of a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)
    return scheme.lower(), {key.lower(): quoted or bare for key, quoted, bare in pairs}


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    return parts._replace(query="&".join(q for q in (parts.query, urlencode(params)) if q)).geturl()


def _server_said(answer: _Answer) -> str:
    """The status and the registry's own words: its error codes and messages, else its text."""
    try:
        errors = json.loads(answer.body)["errors"]
        said = "; ".join(f"{error.get('code')}: {error.get('message')}" for error in errors)
    except (ValueError, KeyError, TypeError, AttributeError):
        said = " ".join(answer.body.decode(errors="replace").split())[:300]
    return f"HTTP {answer.status} {answer.reason}: {said}" if said else f"HTTP {answer.status} {answer.reason}"


# ---------------------------------------------------------------------------- pulled layers


def _layers(manifest: dict[str, Any], image: ImageName) -> list[Descriptor]:
    """The manifest's layers: tar or gzip-compressed tar, each named by a sha256 digest."""
    try:
        layers = [
            Descriptor(str(entry["mediaType"]), str(entry["digest"]), int(entry["size"]))
            for entry in manifest["layers"]
        ]
    except (KeyError, TypeError, ValueError):
        raise InvalidSpec(f"OCI image {image}: the manifest's layers are not descriptors") from None
    if not layers:
        raise InvalidSpec(f"OCI image {image} has no layers")
    for layer in layers:
        if not DIGEST.fullmatch(layer.digest):
            raise InvalidSpec(f"OCI image {image}: layer digest {layer.digest!r} is not a sha256 digest")
        if layer.media_type not in PULLED_LAYER_TYPES:
            raise InvalidSpec(
                f"OCI image {image}: layer {layer.digest} is {layer.media_type}; an adapter image's layers "
                "are tar archives, plain or gzip-compressed"
            )
    return layers


def _extract_data(blob: Path, folder: Path, what: str) -> None:
    """Copy the regular files under data/ in a layer's tar into `folder`. Links, devices and
    files elsewhere are passed over; an entry whose path is absolute or climbs out with ..
    refuses the layer, since no honest image has one."""
    try:
        with tarfile.open(blob, mode="r:*") as tar:  # gzip or plain, as the content says
            for entry in tar:
                path = PurePosixPath(entry.name)
                if path.is_absolute() or ".." in path.parts:
                    raise InvalidSpec(f"{what} has an entry {entry.name!r} that leaves its folder; refused")
                if not entry.isreg() or len(path.parts) < 2 or path.parts[0] != LAYER_FOLDER:
                    continue
                target = folder.joinpath(*path.parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                content = tar.extractfile(entry)
                assert content is not None, "a regular file has content"
                with content, target.open("wb") as file:
                    shutil.copyfileobj(content, file, CHUNK_BYTES)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise InvalidSpec(f"{what} is not a readable tar archive: {error}") from None
