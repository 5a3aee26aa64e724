"""Credentials from the Secrets a spec names, read in one place and kept out of what is said.

A Secret is mounted as a folder (one file per key) under the runtime's secrets folder. Every
store (object storage, an OCI registry, the Hub) and the tracking backends read their keys
through `secret_keys` or `secret_value`, and whatever they say about a failure passes through
`redact` first: a value never reaches a log, an exception or the termination message."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kubetune_trainer.errors import InvalidSpec
from kubetune_trainer.mounts import inside, permission_denied
from kubetune_trainer.runtime import Runtime

HIDDEN = "***"


def secret_folder(runtime: Runtime, name: str) -> Path:
    """Where the Secret `name` is mounted."""
    return runtime.secrets / name


def secret_value(runtime: Runtime, name: str, key: str) -> str:
    """A key the Secret must have, stripped of its trailing newline. Raises InvalidSpec
    saying which key is missing or unreadable (never its value)."""
    file = inside(secret_folder(runtime, name), key, f"Secret {name} key")
    try:
        return file.read_text().strip()
    except PermissionError:
        raise InvalidSpec(f"Secret {name} key {key}: {permission_denied(file)}") from None
    except OSError as error:
        raise InvalidSpec(f"Secret {name} key {key} is not mounted at {file} ({error.strerror})") from None


def secret_keys(runtime: Runtime, name: str, keys: Iterable[str]) -> dict[str, str]:
    """Those of `keys` the Secret has (a Secret may hold some of a backend's keys only)."""
    folder = secret_folder(runtime, name)
    return {key: secret_value(runtime, name, key) for key in keys if (folder / key).is_file()}


def redact(text: str, *secrets: str | None) -> str:
    """`text` on one line (for a status), with every secret value replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return " ".join(text.split())
