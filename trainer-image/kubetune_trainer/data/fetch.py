"""Download a dataset file over HTTPS, guarded.

A FineTuneJob names URLs that the trainer fetches from inside the cluster, so a URL must
not reach what a pod can but a person should not: loopback, link-local addresses (where
cloud metadata services answer), private networks (the cluster's own services) and other
special ranges are refused, every redirect is checked again, the connection goes to the
address that was checked (no second DNS answer), the size is capped and a given SHA-256
is verified before the file is used.

A cluster administrator may allow networks (an in-cluster MinIO or HTTP mirror); cloud
metadata addresses stay refused inside them.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from kubetune.contract import HOW_TO_ALLOW, METADATA, Network, address_refusal, embedded_ipv4, host_address
from kubetune_trainer.disk import WHAT, no_space
from kubetune_trainer.errors import InvalidData

MAX_REDIRECTS = 5
CHUNK = 1 << 20


def resolve(host: str, port: int) -> list[str]:
    """The addresses DNS gives for a host (raises OSError when there are none)."""
    return [str(answer[4][0]) for answer in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 64 * 1024**3
    timeout_seconds: float = 60.0
    allowed_networks: tuple[Network, ...] = ()
    """Networks the cluster allows despite the default refusals (never a metadata address)."""
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)
    resolver: Callable[[str, int], Sequence[str]] = resolve


def fetch(url: str, destination: Path, sha256: str | None = None, policy: FetchPolicy | None = None) -> Path:
    """Download `url` to `destination` (atomically). Raises InvalidData saying what went wrong."""
    policy = policy or FetchPolicy()
    digest = hashlib.sha256()
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    response, connection = _open(url, policy)
    try:
        size = 0
        with partial.open("wb") as handle:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > policy.max_bytes:
                    raise InvalidData(f"{url}: larger than the limit of {policy.max_bytes} bytes")
                digest.update(chunk)
                handle.write(chunk)
    except OSError as error:
        if error.errno in WHAT:
            raise no_space([partial], error.errno, error) from None
        raise InvalidData(f"{url}: download failed: {error}") from None
    finally:
        connection.close()
    if sha256 is not None and digest.hexdigest() != sha256:
        partial.unlink()
        raise InvalidData(f"{url}: SHA-256 is {digest.hexdigest()}, the spec expects {sha256}")
    partial.replace(destination)
    return destination


def _open(url: str, policy: FetchPolicy) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidData(f"{url}: only https URLs are fetched")
        addresses = _vetted_addresses(parts.hostname, parts.port or 443, policy, url)
        connection = _PinnedConnection(parts.hostname, addresses, parts.port or 443, policy)
        path = parts.path or "/"
        try:
            connection.request(
                "GET", f"{path}?{parts.query}" if parts.query else path, headers={"User-Agent": "kubetune-trainer"}
            )
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise InvalidData(f"{url}: cannot fetch: {error}") from None
        if response.status in {301, 302, 303, 307, 308} and response.getheader("Location"):
            connection.close()
            url = urljoin(url, response.getheader("Location", ""))
            continue
        if response.status != 200:
            connection.close()
            raise InvalidData(f"{url}: the server answered {response.status} {response.reason}")
        return response, connection
    raise InvalidData(f"{url}: more than {MAX_REDIRECTS} redirects")


def _vetted_addresses(host: str, port: int, policy: FetchPolicy, url: str) -> list[str]:
    """Every address the host has, each checked: one refused address refuses the host, as the
    connection could go to any of them."""
    literal = host_address(host)
    if literal is not None:
        answers = [literal]
    else:
        try:
            answers = [ipaddress.ip_address(answer) for answer in policy.resolver(host, port)]
        except OSError as error:
            raise InvalidData(f"{url}: cannot resolve {host}: {error.strerror or error}") from None
    if not answers:
        raise InvalidData(f"{url}: cannot resolve {host}: no address")
    for address in answers:
        reason = address_refusal(address, policy.allowed_networks)
        if reason is not None:
            embedded = embedded_ipv4(address)
            reaches = f" ({embedded})" if embedded else ""
            hint = "" if reason == METADATA else f"; {HOW_TO_ALLOW}"
            raise InvalidData(f"{url}: refused, {host} resolves to {address}{reaches}, {reason}{hint}")
    return [str(address) for address in dict.fromkeys(answers)]


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to one of the addresses that were checked (the first that answers), with the
    host name kept for TLS."""

    def __init__(self, host: str, addresses: list[str], port: int, policy: FetchPolicy) -> None:
        super().__init__(host, port, timeout=policy.timeout_seconds, context=policy.tls)
        self._addresses = addresses
        self._tls = policy.tls

    def connect(self) -> None:
        failure: OSError | None = None
        for address in self._addresses:
            try:
                raw = socket.create_connection((address, self.port), self.timeout)
            except OSError as error:
                failure = error
                continue
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
            return
        raise failure or OSError(f"no address to connect to for {self.host}")
