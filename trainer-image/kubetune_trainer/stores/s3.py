"""S3-compatible object storage: datasets read from a bucket, results and checkpoints
written to one.

Credentials come from the mounted Secret the spec names (keys AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN), else from the pod's own
identity through the standard chain. They are never logged: an error names the bucket
and prefix, and botocore's messages name no secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubetune.api.base import S3Location
from kubetune_trainer.errors import InvalidData, TrainerError
from kubetune_trainer.mounts import inside
from kubetune_trainer.runtime import Runtime
from kubetune_trainer.stores.secrets import secret_folder, secret_keys

CREDENTIAL_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
}


@dataclass(frozen=True)
class Bucket:
    """A bucket and a key prefix, reached with the spec's endpoint and credentials."""

    location: S3Location
    client: Any

    @classmethod
    def open(cls, location: S3Location, runtime: Runtime) -> Bucket:
        import boto3

        credentials: dict[str, str] = {}
        if location.credentials_secret is not None:
            name = location.credentials_secret.name
            found = secret_keys(runtime, name, CREDENTIAL_KEYS)
            credentials = {CREDENTIAL_KEYS[key]: value for key, value in found.items()}
            if "aws_access_key_id" not in credentials:
                raise TrainerError(
                    f"Secret {name} has no AWS_ACCESS_KEY_ID key (mounted at {secret_folder(runtime, name)})"
                )
        client = boto3.client(
            "s3", endpoint_url=location.endpoint, region_name=location.region or "us-east-1", **credentials
        )
        return cls(location, client)

    @property
    def name(self) -> str:
        return urlsplit(self.location.uri).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.location.uri).path.lstrip("/")

    @property
    def folder(self) -> str:
        """The prefix as a folder: what every key under it starts with ("" for the whole bucket)."""
        stem = self.prefix.rstrip("/")
        return f"{stem}/" if stem else ""

    def child(self, path: str) -> Bucket:
        """The same bucket, endpoint and credentials, at `<prefix>/<path>`."""
        return replace(
            self,
            location=self.location.model_copy(update={"uri": f"{self.location.uri.rstrip('/')}/{path.strip('/')}"}),
        )

    def download(self, folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
        """The object the URI names, or every object under it with one of the suffixes."""
        with self._failing(InvalidData, "read from"):
            keys = [
                item["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.prefix)
                for item in page.get("Contents", [])
            ]
            wanted = [
                k for k in keys if k == self.prefix or (k.lower().endswith(suffixes) and k.startswith(self.folder))
            ]
            if not wanted and self.prefix in keys:
                wanted = [self.prefix]
            files = []
            for key in sorted(wanted):
                relative = key[len(self.folder) :] if key != self.prefix else Path(key).name
                target = inside(folder, relative, "object key", InvalidData)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.name, key, str(target))
                files.append(target)
        if not files:
            raise InvalidData(f"{self.location.uri}: no {', '.join(suffixes)} objects there")
        return files

    def objects(self) -> list[str]:
        """Every object under the prefix (taken as a folder), as a path relative to it. The
        empty "folder" objects some consoles create are left out."""
        with self._failing(TrainerError, "read from"):
            return [
                item["Key"][len(self.folder) :]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.folder)
                for item in page.get("Contents", [])
                if not item["Key"].endswith("/")
            ]

    def fetch(self, relatives: Iterable[str], folder: Path) -> None:
        """Download these objects (paths relative to the prefix) into `folder`, keeping their paths."""
        with self._failing(TrainerError, "read from"):
            for relative in relatives:
                target = inside(folder, relative, "object key", TrainerError)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.name, self.folder + relative, str(target))

    def put(self, path: Path, relative: str) -> None:
        """One file, as `<prefix>/<relative>`."""
        with self._failing(TrainerError, "write to"):
            self.client.upload_file(str(path), self.name, self.folder + relative)

    def upload(self, folder: Path, skip: tuple[str, ...] = ()) -> int:
        """Every file under `folder` to the prefix, keeping relative paths, except those whose
        first path part is in `skip`. Returns the count."""
        files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip]
        for path in files:
            self.put(path, path.relative_to(folder).as_posix())
        return len(files)

    def delete(self, relatives: Iterable[str]) -> None:
        """Remove these objects in the order given, one request each: not every S3-compatible
        store implements the multi-object delete."""
        with self._failing(TrainerError, "delete from"):
            for relative in relatives:
                self.client.delete_object(Bucket=self.name, Key=self.folder + relative)

    @contextmanager
    def _failing(self, error_class: type[TrainerError], doing: str) -> Iterator[None]:
        """Raise the store's errors as `error_class`, naming the bucket and prefix."""
        from boto3.exceptions import Boto3Error  # the transfer manager wraps ClientError in these
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise error_class(f"{self.location.uri}: cannot {doing} object storage: {error}") from None
