"""S3-compatible object storage: datasets read from a bucket, results written to one.

Credentials come from the mounted Secret the spec names (keys AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN), else from the pod's own
identity through the standard chain. They are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubetune.api.base import S3Location
from kubetune_trainer.errors import InvalidData, TrainerError
from kubetune_trainer.runtime import Runtime

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
            folder = runtime.secrets / location.credentials_secret.name
            for key, argument in CREDENTIAL_KEYS.items():
                if (folder / key).is_file():
                    credentials[argument] = (folder / key).read_text().strip()
            if "aws_access_key_id" not in credentials:
                raise TrainerError(
                    f"Secret {location.credentials_secret.name} has no AWS_ACCESS_KEY_ID key (mounted at {folder})"
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

    def download(self, folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
        """The object the URI names, or every object under it with one of the suffixes."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            keys = [
                item["Key"]
                for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.prefix)
                for item in page.get("Contents", [])
            ]
            wanted = [
                k
                for k in keys
                if k == self.prefix or (k.lower().endswith(suffixes) and k.startswith(self.prefix.rstrip("/") + "/"))
            ]
            if not wanted and self.prefix in keys:
                wanted = [self.prefix]
            files = []
            for key in sorted(wanted):
                target = folder / (Path(key).relative_to(self.prefix) if key != self.prefix else Path(key).name)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.name, key, str(target))
                files.append(target)
        except (BotoCoreError, ClientError) as error:
            raise InvalidData(f"{self.location.uri}: cannot read from object storage: {error}") from None
        if not files:
            raise InvalidData(f"{self.location.uri}: no {', '.join(suffixes)} objects there")
        return files

    def upload(self, folder: Path, skip: tuple[str, ...] = ()) -> int:
        """Every file under `folder` to the prefix, keeping relative paths. Returns the count."""
        from botocore.exceptions import BotoCoreError, ClientError

        count = 0
        try:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                relative = path.relative_to(folder)
                if relative.parts[0] in skip:
                    continue
                key = f"{self.prefix.rstrip('/')}/{relative.as_posix()}" if self.prefix else relative.as_posix()
                self.client.upload_file(str(path), self.name, key)
                count += 1
        except (BotoCoreError, ClientError) as error:
            raise TrainerError(f"{self.location.uri}: cannot write to object storage: {error}") from None
        return count
